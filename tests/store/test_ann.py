"""Approximate dense search (usearch HNSW): filters applied before top-k, exact fallback for selective filters
and small stores, high recall against exact search, clean option errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from haystack import Document

from ragconf.errors import StoreError
from ragconf.store import open_store
from ragconf.store.ann import AnnOptions, usearch_available
from ragconf.store.sqlite import SQLiteChunkStore

pytestmark = pytest.mark.skipif(not usearch_available(), reason="needs ragconf[ann] (usearch)")

DIM = 32
N = 3000


def clustered(n: int, seed: int) -> np.ndarray:
    """Vectors with a low intrinsic dimension, like text embeddings (random 32-d vectors are a worst case)."""
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(99).normal(size=(8, DIM))
    v = rng.normal(size=(n, 8)) @ basis + 0.3 * rng.normal(size=(n, DIM))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("ann") / "s.sqlite"
    s = SQLiteChunkStore(p, embedding_dim=DIM)
    vecs = clustered(N, 1)
    items = []
    for i in range(N):
        meta = {"doc_id": f"d{i}", "tenant": "acme" if i % 2 else "globex", "rare": i % 100 == 0}
        items.append(
            (f"d{i}", "h", [Document(id=f"c{i}", content=f"chunk {i}", meta=meta, embedding=vecs[i].tolist())])
        )
    s.replace_docs("c", items)
    s.close()
    return p


def stores(path: Path) -> tuple[SQLiteChunkStore, SQLiteChunkStore]:
    ann = SQLiteChunkStore(
        path, embedding_dim=DIM, ann={"mode": "on", "min_rows": 0, "exact_rows": 0, "candidates": 100}
    )
    exact = SQLiteChunkStore(path, embedding_dim=DIM, ann={"mode": "off"})
    return ann, exact


@pytest.mark.parametrize(
    "flt",
    [None, {"field": "meta.tenant", "operator": "==", "value": "acme"}],
    ids=["no filter", "half allowed"],
)
def test_recall_against_exact_and_filter_before_top_k(path: Path, flt: dict | None) -> None:
    ann, exact = stores(path)
    queries = clustered(50, 2)
    hits = 0
    for q in queries:
        got = ann.embedding_retrieval(q.tolist(), filters=flt, top_k=10)
        ref = exact.embedding_retrieval(q.tolist(), filters=flt, top_k=10)
        assert len(got) == 10
        if flt:
            assert all(d.meta["tenant"] == "acme" for d in got)
        hits += len({d.id for d in got} & {d.id for d in ref})
        # scores are exact cosines, whichever path proposed the candidate
        scores = [d.score for d in got]
        assert scores == sorted(scores, reverse=True)
    assert snapshot_has_graph(ann)
    assert hits / (10 * len(queries)) >= 0.95
    ann.close()
    exact.close()


def snapshot_has_graph(store: SQLiteChunkStore) -> bool:
    return store._snap.ann is not None


def test_selective_filter_is_exact_and_complete(path: Path) -> None:
    ann, exact = stores(path)
    flt = {"field": "meta.rare", "operator": "==", "value": True}  # 1% of rows: below exact_below
    q = clustered(1, 3)[0].tolist()
    got = ann.embedding_retrieval(q, filters=flt, top_k=100)
    ref = exact.embedding_retrieval(q, filters=flt, top_k=100)
    assert [d.id for d in got] == [d.id for d in ref] and len(got) == N // 100
    assert not snapshot_has_graph(ann)  # the graph was not even needed
    ann.close()
    exact.close()


def test_small_store_stays_exact_and_writes_rebuild_the_graph(tmp_path: Path) -> None:
    s = SQLiteChunkStore(tmp_path / "s.sqlite", embedding_dim=DIM, ann={"min_rows": 50})
    vecs = clustered(60, 4)
    s.write_documents([Document(id=f"c{i}", content="x", embedding=vecs[i].tolist()) for i in range(40)])
    assert s.embedding_retrieval(vecs[0].tolist(), top_k=1)[0].id == "c0"
    assert not snapshot_has_graph(s)  # 40 < min_rows
    s.write_documents([Document(id=f"c{i}", content="x", embedding=vecs[i].tolist()) for i in range(40, 60)])
    assert s.embedding_retrieval(vecs[55].tolist(), top_k=1)[0].id == "c55"  # a new generation's graph
    assert snapshot_has_graph(s)
    s.delete_documents(["c55"])
    assert "c55" not in [d.id for d in s.embedding_retrieval(vecs[55].tolist(), top_k=5)]
    s.close()


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"mode": "fast"}, "store.ann.mode must be one of auto, on, off"),
        ({"dtype": "f64"}, "store.ann.dtype"),
        ({"exact_below": 2}, "store.ann.exact_below"),
        ({"min_rows": -1}, "store.ann.min_rows"),
        ({"bogus": 1}, "unknown key store.ann.bogus"),
        ("on", "store.ann must be a mapping"),
    ],
)
def test_bad_options_are_store_errors(tmp_path: Path, raw: object, match: str) -> None:
    with pytest.raises(StoreError, match=match):
        open_store({"type": "sqlite", "path": str(tmp_path / "s.sqlite"), "ann": raw}, embedding_dim=DIM)


def test_candidates_scale_with_selectivity() -> None:
    opts = AnnOptions(candidates=100, oversample=2.0)
    assert opts.want(10, 10_000, 10_000) == 100
    assert opts.want(100, 10_000, 10_000) == 200
    assert opts.want(10, 10_000, 1_000) == 1000
    assert opts.want(10, 500, 50) == 500
    # beyond 100k vectors the net widens with the fourth root of the size (recall@10 at 1M: 0.983 with 534)
    assert AnnOptions().want(10, 100_000, 100_000) == 300
    assert AnnOptions().want(10, 1_000_000, 1_000_000) == 534


def test_exact_rule() -> None:
    opts = AnnOptions(min_rows=1000, exact_below=0.05, exact_rows=100)
    assert opts.exact(999, 999)  # small store
    assert not opts.exact(10_000, 10_000)  # no filter
    assert opts.exact(10_000, 100) and opts.exact(10_000, 400)  # few rows / small fraction
    assert not opts.exact(10_000, 600)
