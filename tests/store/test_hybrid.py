"""Store-level hybrid retrieval: the same ranking and scores as BM25 + dense retrievers joined by Haystack's RRF
joiner, filters pushed into both branches; `pipeline=hybrid_fast` retrieves what `pipeline=hybrid` does for every
handbook user through the real RagApp (policy filter, guard)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from haystack import Document
from haystack.components.joiners import DocumentJoiner

from ragconf.store.components import StoreHybridRetriever
from ragconf.store.fusion import rrf
from ragconf.store.sqlite import SQLiteChunkStore

DIM = 16
WORDS = "failover runbook database leave weeks shoes cache index vector query token policy outage replica".split()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    s = SQLiteChunkStore(tmp_path_factory.mktemp("hy") / "s.sqlite", embedding_dim=DIM)
    items = []
    for i in range(300):
        v = rng.normal(size=DIM)
        text = " ".join(rng.choice(WORDS, size=int(rng.integers(2, 12))))
        meta = {"doc_id": f"d{i}", "tenant": ["acme", "globex"][i % 2], "acl_groups": [f"g{i % 5}"]}
        items.append((f"d{i}", "h", [Document(id=f"c{i}", content=text, meta=meta, embedding=v.tolist())]))
    s.replace_docs("c", items)
    yield s
    s.close()


FILTERS = [
    None,
    {"field": "meta.tenant", "operator": "==", "value": "acme"},
    {"field": "meta.acl_groups", "operator": "in", "value": ["g1", "g3"]},
]


@pytest.mark.parametrize("flt", FILTERS)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_same_as_retrievers_plus_rrf_joiner(store: SQLiteChunkStore, flt: dict | None, seed: int) -> None:
    rng = np.random.default_rng(seed)
    query = " ".join(rng.choice(WORDS, size=3))
    emb = rng.normal(size=DIM).tolist()
    lexical = store.bm25_retrieval(query, filters=flt, top_k=30)
    dense = store.embedding_retrieval(emb, filters=flt, top_k=30)
    expected = DocumentJoiner(join_mode="reciprocal_rank_fusion", top_k=10).run(documents=[lexical, dense])["documents"]
    got = store.hybrid_retrieval(query, emb, filters=flt, top_k=10, candidates=30)
    assert [d.id for d in got] == [d.id for d in expected]
    np.testing.assert_allclose([d.score for d in got], [d.score for d in expected], rtol=1e-9)
    if flt:
        allowed = {d.id for d in store.filter_documents(flt)}
        assert {d.id for d in got} <= allowed
    # the component: store call, and branch-by-branch fusion for a store without hybrid_retrieval
    comp = StoreHybridRetriever(store, top_k=10, candidates=30)
    assert [d.id for d in comp.run(query=query, query_embedding=emb, filters=flt)["documents"]] == [
        d.id for d in expected
    ]

    class Plain:  # only the ChunkStore retrieval methods
        bm25_retrieval = store.bm25_retrieval
        embedding_retrieval = store.embedding_retrieval

    plain = StoreHybridRetriever(Plain(), top_k=10, candidates=30)
    assert [d.id for d in plain.run(query=query, query_embedding=emb, filters=flt)["documents"]] == [
        d.id for d in expected
    ]


def test_runtime_filter_is_anded_with_init_filter(store: SQLiteChunkStore) -> None:
    init = {"field": "meta.tenant", "operator": "==", "value": "acme"}
    comp = StoreHybridRetriever(store, top_k=50, filters=init)
    emb = np.ones(DIM).tolist()
    docs = comp.run(query="failover", query_embedding=emb, filters=FILTERS[2])["documents"]
    assert docs and all(d.meta["tenant"] == "acme" and d.meta["acl_groups"][0] in ("g1", "g3") for d in docs)


def test_stopword_query_still_has_the_dense_branch(store: SQLiteChunkStore) -> None:
    emb = np.ones(DIM).tolist()
    got = store.hybrid_retrieval("the of", emb, top_k=5)
    assert [d.id for d in got] == [d.id for d in store.embedding_retrieval(emb, top_k=5)]


def test_bad_parameters() -> None:
    with pytest.raises(ValueError, match="candidates"):
        StoreHybridRetriever(object(), candidates=0)
    with pytest.raises(ValueError, match="weights"):
        StoreHybridRetriever(object(), weights=[1.0])
    with pytest.raises(ValueError, match="fusion weights"):
        rrf([[1], [2]], 5, [1.0])


def test_hybrid_fast_pipeline_matches_hybrid_for_every_user(tmp_path: Path) -> None:
    from ragconf.runtime import RagApp

    base = ["tracking=disabled", f"project.workdir={tmp_path}", "policy.audit.sink=none"]
    composed = RagApp.from_overrides([*base, "pipeline=hybrid"])
    composed.ingest()
    fast = RagApp.from_overrides([*base, "pipeline=hybrid_fast"])
    questions = ["How do I run the database failover?", "How long is parental leave?", "What is the salary band?"]
    seen_by_user: dict[str, set[str]] = {}
    try:
        for user in ("alice", "bob", "carol", "gina", "anonymous"):
            for question in questions:
                a, _, _ = composed.retrieve(question, composed.principal(user))
                b, ids, _ = fast.retrieve(question, fast.principal(user))
                assert [d.id for d in b] == [d.id for d in a]
                assert ids  # the policy's filter and guard decisions were made
                seen_by_user.setdefault(user, set()).update(d.id for d in b)
    finally:
        composed.close()
        fast.close()
    assert len({frozenset(v) for v in seen_by_user.values()}) > 1  # users see different documents
