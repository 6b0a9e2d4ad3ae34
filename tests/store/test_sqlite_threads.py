"""The SQLite store shared between threads (the HTTP server): concurrent hybrid retrieval with different
filters while another thread writes returns exactly what a single thread gets; close() closes every
connection."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from haystack import Document

from ragconf.compile import BuildContext, build_stage
from ragconf.errors import StoreError
from ragconf.spec.models import StageSpec
from ragconf.store import open_store

DIM = 16
WORDS = "failover database runbook leave policy salary network vpn backup restore incident payroll laptop".split()
WRITER_WORDS = "zqa zqb zqc zqd zqe zqf".split()  # the writer's documents share no term with the queries
QUERIES = ["database failover runbook", "leave policy salary", "vpn network laptop", "backup restore incident"]
FILTERS: list[dict[str, Any]] = [
    {"field": "meta.tenant", "operator": "==", "value": "acme"},
    {"field": "meta.tenant", "operator": "==", "value": "globex"},
    {
        "operator": "AND",
        "conditions": [
            {"field": "meta.tenant", "operator": "==", "value": "acme"},
            {"field": "meta.acl_groups", "operator": "in", "value": ["sre"]},
        ],
    },
    {
        "operator": "AND",
        "conditions": [
            {"field": "meta.tenant", "operator": "in", "value": ["acme", "globex"]},
            {"field": "meta.classification", "operator": "in", "value": ["public", "internal"]},
        ],
    },
    {
        "operator": "AND",
        "conditions": [
            {"field": "meta.tenant", "operator": "==", "value": "acme"},
            {"operator": "NOT", "conditions": [{"field": "meta.acl_groups", "operator": "in", "value": ["hr"]}]},
        ],
    },
]


def unit(v: np.ndarray) -> list[float]:
    return (v / np.linalg.norm(v)).tolist()


def corpus(n: int = 400) -> list[tuple[str, str, list[Document]]]:
    rng = np.random.default_rng(7)
    items = []
    for i in range(n):
        words = rng.choice(WORDS, size=int(rng.integers(5, 40)))
        meta = {
            "doc_id": f"d{i}",
            "tenant": ["acme", "globex"][i % 2],
            "classification": ["public", "internal", "confidential"][i % 3],
            "acl_groups": [["sre"], ["hr"], ["sre", "hr"], []][i % 4],
        }
        doc = Document(id=f"d{i}", content=" ".join(words), meta=meta, embedding=unit(rng.normal(size=DIM)))
        items.append((f"d{i}", "h", [doc]))
    return items


def writer_items(round_: int) -> list[tuple[str, str, list[Document]]]:
    """Same ids, same lengths, same (absent) access fields each round: BM25 statistics of the query terms and
    every filtered result stay the same, while rows, row ids and the dense matrix change on every commit."""
    rng = np.random.default_rng(round_)
    out = []
    for j in range(5):
        text = " ".join(rng.choice(WRITER_WORDS, size=20))
        doc = Document(id=f"w{j}", content=text, meta={"doc_id": f"w{j}"}, embedding=unit(rng.normal(size=DIM)))
        out.append((f"w{j}", f"h{round_}", [doc]))
    return out


def hybrid(store: Any) -> Any:
    spec = StageSpec.model_validate(
        {
            "name": "hybrid",
            "components": {
                "bm25": {"type": "bm25_retriever", "params": {"top_k": 20}},
                "dense": {"type": "embedding_retriever", "params": {"top_k": 20}},
                "fuse": {"type": "rrf_joiner", "params": {"top_k": 10}},
            },
            "connections": [
                {"sender": "bm25.documents", "receiver": "fuse.documents"},
                {"sender": "dense.documents", "receiver": "fuse.documents"},
            ],
            "inputs": {"query": ["bm25.query"], "query_embedding": ["dense.query_embedding"]},
            "output": "fuse.documents",
        }
    )
    # retrievers only build in a guarded retrieval stage; the guard here lets every document through (the
    # store's filter pushdown, not the policy, is under test)
    return build_stage(spec, "pipeline", BuildContext(store=store, policy=_AllowAll()), guard=True)


class _AllowAll:
    def check_documents(self, principal: Any, documents: list[Any], request: dict[str, Any]) -> Any:
        from types import SimpleNamespace

        return SimpleNamespace(allowed=documents, decision_id="all", denied=0)


def run(stage: Any, q: int, f: int) -> list[tuple[str, float]]:
    emb = unit(np.random.default_rng(1000 + q).normal(size=DIM))
    filters = {"filters": FILTERS[f]}
    docs, _ = stage.run(
        {"query": QUERIES[q], "query_embedding": emb},
        extra={"bm25": filters, "dense": filters, "access_guard": {"principal": "p"}},
    )
    return [(d.id, round(float(d.score), 9)) for d in docs]


def test_concurrent_hybrid_retrieval_with_a_writer_matches_single_threaded(tmp_path: Path) -> None:
    store = open_store({"type": "sqlite", "path": str(tmp_path / "s.sqlite")}, embedding_dim=DIM)
    store.replace_docs("c", corpus())
    store.replace_docs("c", writer_items(0))
    stage = hybrid(store)
    cases = [(q, f) for q in range(len(QUERIES)) for f in range(len(FILTERS))]
    expected = {case: run(stage, *case) for case in cases}
    assert all(expected.values()) and len({tuple(v) for v in expected.values()}) > len(cases) // 2

    stop = threading.Event()
    writes = [0]
    errors: list[BaseException] = []
    mismatches: list[tuple[tuple[int, int], Any, Any]] = []

    def writer() -> None:
        try:
            while not stop.is_set():
                writes[0] += 1
                store.replace_docs("c", writer_items(writes[0]))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    def reader(seed: int) -> None:
        try:
            own = hybrid(store)  # one pipeline per thread, one store shared by all
            order = np.random.default_rng(seed).permutation(len(cases) * 3) % len(cases)
            for i in order:
                case = cases[int(i)]
                got = run(own, *case)
                if got != expected[case]:
                    mismatches.append((case, got, expected[case]))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    w = threading.Thread(target=writer)
    readers = [threading.Thread(target=reader, args=(s,)) for s in range(4)]
    w.start()
    for t in readers:
        t.start()
    for t in readers:
        t.join(timeout=120)
    stop.set()
    w.join(timeout=30)
    assert not errors, errors
    assert not mismatches, mismatches[:2]
    assert writes[0] >= 2, "the writer never overlapped the readers"
    # every thread read through a connection of its own
    assert len({id(conn) for _, conn in store._readers}) == len(store._readers) >= 1
    assert store.count_documents() == 405
    store.close()


def test_close_closes_every_thread_connection(tmp_path: Path) -> None:
    store = open_store({"type": "sqlite", "path": str(tmp_path / "s.sqlite")}, embedding_dim=DIM)
    store.replace_docs("c", corpus(20))
    barrier = threading.Barrier(3)

    def read() -> None:
        store.bm25_retrieval("failover")
        barrier.wait(timeout=10)  # keep the thread alive until all three have opened a connection

    threads = [threading.Thread(target=read) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    conns = [conn for _, conn in store._readers]
    assert len(conns) == 3
    store.close()
    for conn in [*conns, store._db]:
        with pytest.raises(sqlite3.ProgrammingError):
            conn.execute("SELECT 1")
    with pytest.raises(StoreError, match="closed"):
        store.bm25_retrieval("failover")


def test_readers_of_finished_threads_are_closed(tmp_path: Path) -> None:
    store = open_store({"type": "sqlite", "path": str(tmp_path / "s.sqlite")}, embedding_dim=DIM)
    store.replace_docs("c", corpus(20))
    for _ in range(5):
        t = threading.Thread(target=store.count_documents)
        t.start()
        t.join()
    store.count_documents()
    assert len(store._readers) <= 2  # this thread plus at most the last finished one
    store.close()


def test_another_process_write_invalidates_the_caches(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sqlite")
    a = open_store({"type": "sqlite", "path": path}, embedding_dim=DIM)
    b = open_store({"type": "sqlite", "path": path}, embedding_dim=DIM)  # stands for another process
    a.replace_docs("c", corpus(10))
    q = corpus(10)[3][2][0].embedding
    flt = FILTERS[1]
    assert a.embedding_retrieval(q, top_k=1)[0].id == "d3"
    before = {d.id for d in a.embedding_retrieval(q, filters=flt, top_k=100)}
    b.delete_docs("c", ["d3"])
    assert a.embedding_retrieval(q, top_k=1)[0].id != "d3"
    assert "d3" not in {d.id for d in a.bm25_retrieval("failover database", top_k=100)}
    b.replace_docs("c", [("d1", "h", [Document(id="d1", content="x", meta={"doc_id": "d1", "tenant": "acme"})])])
    assert {d.id for d in a.embedding_retrieval(q, filters=flt, top_k=100)} == before - {"d1", "d3"}
    a.close()
    b.close()


def test_opening_an_existing_store_writes_nothing(tmp_path: Path) -> None:
    """Another process opening the store (a CLI `ask` next to the server) must not invalidate caches."""
    path = tmp_path / "s.sqlite"
    a = open_store({"type": "sqlite", "path": str(path)}, embedding_dim=DIM)
    a.replace_docs("c", corpus(5))

    def generation() -> str:
        db = sqlite3.connect(path)
        try:
            return str(db.execute("SELECT value FROM info WHERE key='generation'").fetchone()[0])
        finally:
            db.close()

    before = generation()
    open_store({"type": "sqlite", "path": str(path)}, embedding_dim=DIM).close()
    assert generation() == before
    a.replace_docs("c", corpus(6))
    assert int(generation()) == int(before) + 1
    a.close()
