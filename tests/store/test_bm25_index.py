"""The in-memory BM25 index ranks exactly as SQLite FTS5's bm25() over the same analysed terms, applies
filters before top-k, and is rebuilt after any write (its own or another process's)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
from haystack import Document

from ragconf.policy.filters import matches
from ragconf.store.sqlite import SQLiteChunkStore
from ragconf.store.text import analyze

WORDS = (
    "failover runbook running runner database leave parental weeks shoes sale cache index vector query token "
    "policy access tenant group secret public incident outage latency replica shard backup restore"
).split()


def corpus(n: int, seed: int = 0) -> list[Document]:
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n):
        words = rng.choice(WORDS, size=int(rng.integers(1, 25)), p=None)
        docs.append(
            Document(
                id=f"c{i}",
                content=" ".join(words),
                meta={
                    "doc_id": f"d{i}",
                    "title": "" if i % 4 else "Incident",
                    "tenant": ["acme", "globex", None][i % 3],
                },
                embedding=[1.0, 0.0, 0.0, 0.0],
            )
        )
    return docs


def fts5_ranking(
    path: Path, query: str, where: str = "1", params: tuple = (), k: int = 1000
) -> list[tuple[str, float]]:
    """The reference: FTS5's own bm25() over the store's FTS5 table."""
    terms = sorted(set(analyze(query)))
    match = " OR ".join(f'"{t}"' for t in terms)
    with sqlite3.connect(path) as db:
        rows = db.execute(
            "SELECT c.id, fts.rank FROM fts JOIN chunks c ON c.rowid = fts.rowid "
            f"WHERE fts MATCH ? AND {where} ORDER BY fts.rank, c.rowid LIMIT ?",
            (match, *params, k),
        ).fetchall()
    return [(cid, -rank) for cid, rank in rows]


@pytest.fixture()
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = SQLiteChunkStore(tmp_path / "s.sqlite", embedding_dim=4)
    docs = corpus(400)
    s.replace_docs("c", [(d.meta["doc_id"], "h", [d]) for d in docs])
    yield s
    s.close()


@pytest.mark.parametrize(
    "query", ["failover runbook", "running database outage", "incident", "the secret shard of the replica", "sale"]
)
def test_scores_and_order_match_fts5_bm25(store: SQLiteChunkStore, query: str) -> None:
    expected = fts5_ranking(store.path, query)
    got = [(d.id, d.score) for d in store.bm25_retrieval(query, top_k=1000)]
    assert [cid for cid, _ in got] == [cid for cid, _ in expected]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in expected], rtol=1e-5)
    top5 = store.bm25_retrieval(query, top_k=5)
    assert [d.id for d in top5] == [cid for cid, _ in expected[:5]]


def test_filter_applies_before_top_k_and_matches_reference(store: SQLiteChunkStore) -> None:
    flt = {"field": "meta.tenant", "operator": "==", "value": "globex"}
    got = store.bm25_retrieval("failover backup", filters=flt, top_k=7)
    expected = fts5_ranking(store.path, "failover backup", "json_extract(c.meta, '$.tenant') = ?", ("globex",), 7)
    assert [d.id for d in got] == [cid for cid, _ in expected]
    assert len(got) == 7 and all(matches(flt, {"meta": d.meta}) for d in got)
    missing = {"field": "meta.tenant", "operator": "==", "value": None}
    assert all(d.meta.get("tenant") is None for d in store.bm25_retrieval("failover", filters=missing, top_k=50))
    assert store.bm25_retrieval("failover", filters={"field": "meta.tenant", "operator": "==", "value": "x"}) == []


def test_unknown_terms_and_stopwords_return_nothing(store: SQLiteChunkStore) -> None:
    assert store.bm25_retrieval("zzzunknown") == []
    assert store.bm25_retrieval("the of and") == []
    assert store.bm25_retrieval("failover", top_k=0) == []


def test_index_follows_writes(store: SQLiteChunkStore, tmp_path: Path) -> None:
    assert store.bm25_retrieval("quasar") == []
    store.write_documents([Document(id="new", content="quasar failover", meta={"doc_id": "new"})])
    assert store.bm25_retrieval("quasar")[0].id == "new"
    other = SQLiteChunkStore(store.path, embedding_dim=4)  # another writer (as another process would)
    other.delete_documents(["new"])
    other.close()
    assert store.bm25_retrieval("quasar") == []
    # idf changes with the corpus: the reference still agrees after the writes
    assert [d.id for d in store.bm25_retrieval("failover", top_k=20)] == [
        cid for cid, _ in fts5_ranking(store.path, "failover", k=20)
    ]


def test_empty_store_and_empty_texts(tmp_path: Path) -> None:
    s = SQLiteChunkStore(tmp_path / "e.sqlite", embedding_dim=4)
    assert s.bm25_retrieval("anything") == []
    s.write_documents([Document(id="a", content="", meta={}), Document(id="b", content="the of", meta={})])
    assert s.bm25_retrieval("anything") == []
    s.close()


def test_batch_load_a_doc_listed_twice_keeps_the_last(tmp_path: Path) -> None:
    s = SQLiteChunkStore(tmp_path / "b.sqlite", embedding_dim=4)
    first = Document(id="x1", content="old quasar", meta={"doc_id": "x"})
    second = Document(id="x2", content="new pulsar", meta={"doc_id": "x"})
    s.replace_docs("c", [("x", "h1", [first]), ("y", "h", []), ("x", "h2", [second])])
    assert [d.id for d in s.filter_documents()] == ["x2"]
    assert s.doc_hashes("c") == {"x": "h2", "y": "h"}
    assert s.bm25_retrieval("quasar") == [] and s.bm25_retrieval("pulsar")[0].id == "x2"
    s.close()
