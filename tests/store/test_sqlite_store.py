"""The embedded store: filters, pushdown, atomic replacement, persistence and crash durability."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from haystack import Document
from haystack.document_stores.types import DuplicatePolicy

from ragconf.errors import SpecError, StoreError
from ragconf.policy.filters import matches
from ragconf.store import open_store
from ragconf.store.components import StoreBM25Retriever, StoreEmbeddingRetriever

DIM = 8


def vec(seed: int) -> list[float]:
    v = np.random.default_rng(seed).normal(size=DIM)
    return (v / np.linalg.norm(v)).tolist()


def doc(cid: str, text: str, seed: int = 0, **meta: object) -> Document:
    return Document(id=cid, content=text, meta={"doc_id": cid, **meta}, embedding=vec(seed))


@pytest.fixture()
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = open_store({"type": "sqlite", "path": str(tmp_path / "s.sqlite")}, embedding_dim=DIM)
    s.replace_docs(
        "c",
        [
            (
                "a",
                "h-a",
                [
                    doc(
                        "a",
                        "The runner runs the failover runbook",
                        1,
                        acl_groups=["sre", "eng"],
                        tenant="acme",
                        classification="confidential",
                    )
                ],
            ),
            ("b", "h-b", [doc("b", "Running shoes are on sale", 2, tenant="acme", classification="public")]),
            ("c", "h-c", [doc("c", "Parental leave lasts twenty weeks", 3, classification="internal", rank=3)]),
            ("d", "h-d", [doc("d", "Runbooks for running the database", 4, acl_groups=[], tenant="globex")]),
        ],
    )
    yield s
    s.close()


FILTERS = [
    {"field": "meta.acl_groups", "operator": "in", "value": ["sre"]},
    {"field": "meta.acl_groups", "operator": "==", "value": None},
    {"field": "meta.acl_groups", "operator": "not in", "value": ["sre"]},
    {"field": "meta.tenant", "operator": "in", "value": [None, "acme"]},
    {"field": "meta.tenant", "operator": "!=", "value": "acme"},
    {"field": "meta.rank", "operator": ">=", "value": 3},
    {"field": "meta.rank", "operator": "<", "value": 3},
    {"operator": "NOT", "conditions": [{"field": "meta.classification", "operator": "==", "value": "public"}]},
    {
        "operator": "OR",
        "conditions": [
            {"field": "id", "operator": "==", "value": "a"},
            {"field": "meta.classification", "operator": "in", "value": ["internal"]},
        ],
    },
]


@pytest.mark.parametrize("flt", FILTERS)
def test_sql_filters_agree_with_reference_semantics(store, flt) -> None:  # type: ignore[no-untyped-def]
    everything = store.filter_documents()
    expected = {d.id for d in everything if matches(flt, {"id": d.id, "content": d.content, "meta": d.meta})}
    assert {d.id for d in store.filter_documents(flt)} == expected


def test_list_fields_match_any_element(store) -> None:  # type: ignore[no-untyped-def]
    got = {d.id for d in store.filter_documents({"field": "meta.acl_groups", "operator": "==", "value": "eng"})}
    assert got == {"a"}
    # an empty list is not "missing": nobody matches it
    assert "d" not in {
        d.id for d in store.filter_documents({"field": "meta.acl_groups", "operator": "==", "value": None})
    }


def test_bm25_stems_and_pushes_filters_down(store) -> None:  # type: ignore[no-untyped-def]
    hits = store.bm25_retrieval("running", top_k=10)
    assert {"a", "b", "d"} <= {d.id for d in hits}
    assert all(d.score is not None and d.score > 0 for d in hits)
    only_public = store.bm25_retrieval(
        "running", filters={"field": "meta.classification", "operator": "==", "value": "public"}, top_k=1
    )
    assert [d.id for d in only_public] == ["b"]


def test_dense_filter_applies_before_top_k(store) -> None:  # type: ignore[no-untyped-def]
    q = vec(1)  # nearest is "a"
    assert store.embedding_retrieval(q, top_k=1)[0].id == "a"
    hits = store.embedding_retrieval(q, filters={"field": "meta.tenant", "operator": "==", "value": "globex"}, top_k=1)
    assert [d.id for d in hits] == ["d"]
    assert store.embedding_retrieval(q, filters={"field": "meta.tenant", "operator": "==", "value": "none"}) == []


def test_retriever_components_and_filters_with_init_filters(store) -> None:  # type: ignore[no-untyped-def]
    r = StoreBM25Retriever(store, top_k=5, filters={"field": "meta.tenant", "operator": "==", "value": "acme"})
    out = r.run("running", filters={"field": "meta.classification", "operator": "==", "value": "public"})
    assert [d.id for d in out["documents"]] == ["b"]
    e = StoreEmbeddingRetriever(store, top_k=2)
    assert len(e.run(vec(2))["documents"]) == 2
    assert e.to_dict()["init_parameters"]["document_store"]["init_parameters"]["embedding_dim"] == DIM


@pytest.mark.parametrize(
    "bad",
    [
        {"field": "meta.x", "operator": "~", "value": 1},
        {"field": "meta.x", "operator": "in", "value": "notalist"},
        {"operator": "AND", "conditions": []},
        {"field": "meta.x", "operator": ">", "value": None},
        {"operator": "==", "value": 1},
    ],
)
def test_invalid_filters_raise_never_return_everything(store, bad) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(StoreError):
        store.bm25_retrieval("running", filters=bad)
    with pytest.raises(StoreError):
        store.embedding_retrieval(vec(1), filters=bad)


def test_replace_delete_hashes_and_fingerprint(store) -> None:  # type: ignore[no-untyped-def]
    fp0 = store.fingerprint()
    assert fp0["documents"] == 4 and fp0["chunks"] == 4
    store.replace_docs(
        "c",
        [
            (
                "a",
                "h-a2",
                [doc("a", "new text one", 5), Document(id="a2", content="two", meta={"doc_id": "a"}, embedding=vec(6))],
            )
        ],
    )
    assert store.doc_hashes("c")["a"] == "h-a2"
    assert store.count_documents() == 5
    assert store.fingerprint()["content_hash"] != fp0["content_hash"]
    assert store.bm25_retrieval("failover") == []  # old chunk text is gone from the index
    assert store.delete_docs("c", ["a", "b"]) == 2
    assert set(store.doc_hashes("c")) == {"c", "d"}
    assert store.count_documents() == 2


def test_failed_batch_rolls_back(store) -> None:  # type: ignore[no-untyped-def]
    bad = Document(id="x", content="x", meta={"doc_id": "x"}, embedding=[1.0, 2.0])  # wrong dimension
    with pytest.raises(StoreError):
        store.replace_docs("c", [("b", "h-b2", [doc("b", "replacement", 7)]), ("x", "h-x", [bad])])
    assert store.doc_hashes("c")["b"] == "h-b"
    assert {d.content for d in store.filter_documents({"field": "id", "operator": "==", "value": "b"})} == {
        "Running shoes are on sale"
    }


def test_persists_across_reopen_and_checks_dimension(tmp_path: Path) -> None:
    path = str(tmp_path / "p.sqlite")
    s = open_store({"type": "sqlite", "path": path}, embedding_dim=DIM)
    s.replace_docs("c", [("a", "h", [doc("a", "persistent words", 1)])])
    s.close()
    s2 = open_store({"type": "sqlite", "path": path}, embedding_dim=DIM)
    assert s2.doc_hashes("c") == {"a": "h"}
    assert s2.bm25_retrieval("persistent")[0].id == "a"
    s2.close()
    with pytest.raises(StoreError, match="8-d vectors"):
        open_store({"type": "sqlite", "path": path}, embedding_dim=16)


def test_unknown_store_type_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match="did you mean 'sqlite'"):
        open_store({"type": "sqlit"}, embedding_dim=DIM)


def test_killed_writer_loses_nothing_committed(tmp_path: Path) -> None:
    path = tmp_path / "crash.sqlite"
    script = textwrap.dedent(f"""
        import sys
        from haystack import Document
        from ragconf.store import open_store
        s = open_store({{"type": "sqlite", "path": {str(path)!r}}}, embedding_dim=2)
        i = 0
        while True:
            s.replace_docs("c", [(f"d{{i}}", "h", [Document(id=f"d{{i}}", content="word " * 200,
                                  meta={{"doc_id": f"d{{i}}"}}, embedding=[1.0, 0.0])])])
            if i == 20:
                print("ready", flush=True)
            i += 1
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    s = open_store({"type": "sqlite", "path": str(path)}, embedding_dim=2)
    hashes = s.doc_hashes("c")
    assert len(hashes) >= 21
    # every committed document is complete: its chunk exists and is searchable
    assert s.count_documents() == len(hashes)
    assert s._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    s.close()


def test_filtered_bm25_finds_allowed_docs_ranked_below_the_fast_path(tmp_path: Path) -> None:
    s = open_store({"type": "sqlite", "path": str(tmp_path / "deep.sqlite")}, embedding_dim=DIM)
    items = [(f"d{i}", "h", [doc(f"d{i}", "failover " * 5 + "runbook", i, tenant="globex")]) for i in range(120)]
    items.append(
        ("rare", "h", [doc("rare", "failover and a great many other unrelated words " * 3, 999, tenant="acme")])
    )
    s.replace_docs("c", items)
    flt = {"field": "meta.tenant", "operator": "==", "value": "acme"}
    assert "rare" not in [d.id for d in s.bm25_retrieval("failover", top_k=100)]
    assert [d.id for d in s.bm25_retrieval("failover", filters=flt, top_k=5)] == ["rare"]
    s.close()


def test_filtered_exact_search_with_cached_allowed_vectors_matches_an_oracle(tmp_path: Path) -> None:
    """A selective filter is scored over a cached copy of its allowed rows' vectors; whatever the cache holds
    (everything, one filter at a time, nothing) and across writes, results are the top-k cosines among the
    rows the filter allows now (oracle: numpy over the vectors written)."""
    dim, n = 384, 6000
    rng = np.random.default_rng(7)
    vecs = rng.normal(size=(n, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    bucket = {f"c{i}": i % 10 for i in range(n)}
    vec_of = {f"c{i}": vecs[i] for i in range(n)}
    path = tmp_path / "s.sqlite"
    writer = open_store({"type": "sqlite", "path": str(path)}, embedding_dim=dim)
    writer.write_documents(
        [Document(id=f"c{i}", content="x", meta={"bucket": i % 10}, embedding=vecs[i].tolist()) for i in range(n)]
    )
    stores = {
        mb: open_store(
            {"type": "sqlite", "path": str(path), "ann": {"mode": "off", "filter_cache_mb": mb}}, embedding_dim=dim
        )
        for mb in (256, 1, 0)  # everything; 1 MB: one 600-row filter (921,600 bytes) at a time; no copies
    }

    def oracle(q: np.ndarray, b: int, k: int) -> list[str]:
        ids = [c for c, bb in bucket.items() if bb == b]
        scores = np.array([float(vec_of[c] @ q) for c in ids])
        return [ids[i] for i in np.argsort(-scores, kind="stable")[:k]]

    queries = rng.normal(size=(6, dim)).astype(np.float32)
    for round_ in range(2):
        for q in queries:
            for b in (3, 4, 3, 5, 4):  # filters repeat, so cached copies are used (and, at 1 MB, evicted)
                flt = {"field": "meta.bucket", "operator": "==", "value": b}
                want = oracle(q / np.linalg.norm(q), b, 10)
                for mb, s in stores.items():
                    got = [d.id for d in s.embedding_retrieval(q.tolist(), filters=flt, top_k=10)]
                    assert got == want, (round_, mb, b)
        for s in stores.values():
            assert s._snap.vector_bytes <= s.ann.filter_cache_mb * 1024 * 1024
        assert stores[256]._snap.vectors and not stores[0]._snap.vectors
        if round_:
            break
        # a write moves rows between filters and adds new best matches: no query may see the old copies
        moved = [f"c{i}" for i in range(0, n, 10)][:100]  # bucket 0 -> 3
        writer.write_documents(
            [Document(id=c, content="x", meta={"bucket": 3}, embedding=vec_of[c].tolist()) for c in moved],
            policy=DuplicatePolicy.OVERWRITE,
        )
        for c in moved:
            bucket[c] = 3
        new = queries / np.linalg.norm(queries, axis=1, keepdims=True)
        writer.write_documents(
            [Document(id=f"q{j}", content="x", meta={"bucket": 4}, embedding=v.tolist()) for j, v in enumerate(new)]
        )
        for j, v in enumerate(new):
            bucket[f"q{j}"], vec_of[f"q{j}"] = 4, v
        writer.delete_documents([f"c{i}" for i in range(5, n, 100)])  # bucket 5 loses rows
        for i in range(5, n, 100):
            del bucket[f"c{i}"]
    for s in (writer, *stores.values()):
        s.close()
