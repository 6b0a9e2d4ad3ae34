"""Retrieval latency of the embedded store: hybrid top-10 (BM25 top-100 + dense top-100 + RRF), one query at a
time, excluding the query embedding; without and with an access filter (~9% of the chunks), side by side with
a peer (bm25s over the same analysed terms + a usearch HNSW graph with the same settings, fused with the same
RRF) in the same run, as ratios. Also: build times (store write, BM25 index, HNSW graph) and the dense
recall@10 of the HNSW path against exact search.

Synthetic chunks: Zipf-distributed words (60 per chunk), 384-d unit vectors with a low intrinsic dimension
(like text embeddings: 32 latent factors + noise), access metadata cycling through tenants/classes/groups.

    python benchmarks/bench_store_latency.py                   # 10k and 100k chunks
    python benchmarks/bench_store_latency.py --sizes 1000000   # 1M (minutes to build; several GB of memory)
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path

import numpy as np
from haystack import Document
from haystack.components.joiners import DocumentJoiner

from ragconf.store.fusion import rrf
from ragconf.store.sqlite import SQLiteChunkStore
from ragconf.store.text import analyze

DIM = 384
VOCAB = [f"w{i}" for i in range(30_000)]
FILTER = {
    "operator": "AND",
    "conditions": [
        {"field": "meta.tenant", "operator": "in", "value": [None, "acme"]},
        {"field": "meta.classification", "operator": "in", "value": [None, "public", "internal"]},
        {
            "operator": "OR",
            "conditions": [
                {"field": "meta.acl_groups", "operator": "==", "value": None},
                {"field": "meta.acl_groups", "operator": "in", "value": ["g1", "g2"]},
            ],
        },
    ],
}
_BASIS = np.random.default_rng(42).normal(size=(32, DIM)).astype(np.float32)


def vectors(rng: np.random.Generator, m: int) -> np.ndarray:
    v = rng.normal(size=(m, 32)).astype(np.float32) @ _BASIS + 0.5 * rng.normal(size=(m, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def meta_of(k: int) -> dict:
    return {
        "doc_id": f"d{k}",
        "tenant": ["acme", "globex", None][k % 3],
        "classification": ["public", "internal", "confidential"][k % 3 if k % 7 else 0],
        "acl_groups": [f"g{k % 10}"],
    }


def build(path: Path, n: int, rng: np.random.Generator) -> tuple[SQLiteChunkStore, list[str], np.ndarray]:
    """The store (written in batches of 5,000 documents) plus the texts and vectors for the peer."""
    store = SQLiteChunkStore(path, embedding_dim=DIM)
    ranks = np.arange(1, len(VOCAB) + 1)
    probs = (1 / ranks) / (1 / ranks).sum()
    texts: list[str] = []
    vecs = np.zeros((n, DIM), dtype=np.float32)
    batch = 5000
    for start in range(0, n, batch):
        m = min(batch, n - start)
        words = rng.choice(len(VOCAB), size=(m, 60), p=probs)
        vecs[start : start + m] = vectors(rng, m)
        items = []
        for i in range(m):
            k = start + i
            text = " ".join(VOCAB[j] for j in words[i])
            texts.append(text)
            doc = Document(id=f"c{k}", content=text, meta=meta_of(k), embedding=vecs[start + i].tolist())
            items.append((f"d{k}", "h", [doc]))
        store.replace_docs("bench", items)
    return store, texts, vecs


class Peer:
    """bm25s (same analysed terms, FTS5-like BM25 'robertson' variant) + usearch HNSW (same settings as the
    store), post-filtered with an oversampled graph search, fused with the same RRF."""

    def __init__(self, texts: list[str], vecs: np.ndarray, store: SQLiteChunkStore) -> None:
        import bm25s
        from usearch.index import Index

        t0 = time.perf_counter()
        self.bm25 = bm25s.BM25(method="robertson", k1=1.2, b=0.75)
        self.bm25.index([analyze(t) for t in texts], show_progress=False)
        self.bm25_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        o = store.ann
        self.ann = Index(ndim=DIM, metric="cos", dtype=o.dtype, connectivity=o.connectivity,
                         expansion_add=o.expansion_add, expansion_search=o.expansion_search)  # fmt: skip
        self.ann.add(np.arange(len(vecs), dtype=np.uint64), vecs, threads=0)
        self.ann_s = time.perf_counter() - t0
        self.vecs = vecs
        self.n = len(vecs)
        self.allowed = np.array([_allowed(meta_of(k)) for k in range(self.n)])
        self.weight = self.allowed.astype(np.float32)

    def hybrid(self, query: str, emb: np.ndarray, filtered: bool, k: int = 100) -> list[tuple[int, float]]:
        terms = analyze(query)
        lex: list[int] = []
        if terms:
            docs, _ = self.bm25.retrieve(
                [terms], k=k, show_progress=False, n_threads=1, weight_mask=self.weight if filtered else None
            )
            lex = [int(d) for d in docs[0]]
        want = max(200, 2 * k) * (int(1 / 0.09) if filtered else 1)
        cand = np.asarray(self.ann.search(emb, min(want, self.n), threads=1).keys, dtype=np.int64)
        if filtered:
            cand = cand[self.allowed[cand]]
        scores = self.vecs[cand] @ emb
        dense = [int(i) for i in cand[np.argsort(-scores)[:k]]]
        return rrf([lex, dense], 10)


def _allowed(m: dict) -> bool:
    return (
        m["tenant"] in (None, "acme")
        and m["classification"] in (None, "public", "internal")
        and any(g in ("g1", "g2") for g in m["acl_groups"])
    )


def percentiles(lat: list[float]) -> tuple[float, float]:
    lat = sorted(lat)
    return lat[len(lat) // 2], lat[int(0.95 * (len(lat) - 1))]


def queries(rng: np.random.Generator, n: int) -> list[tuple[str, np.ndarray]]:
    return [(" ".join(VOCAB[j] for j in rng.integers(0, 3000, size=5)), vectors(rng, 1)[0]) for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--no-peer", action="store_true")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    joiner = DocumentJoiner(join_mode="reciprocal_rank_fusion", top_k=10)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in [int(s) for s in args.sizes.split(",")]:
            t0 = time.perf_counter()
            store, texts, vecs = build(Path(tmp) / f"s{n}.sqlite", n, rng)
            write_s = time.perf_counter() - t0
            qs = queries(rng, args.queries)
            t0 = time.perf_counter()
            store.bm25_retrieval("w1", top_k=1)
            bm25_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            store.embedding_retrieval(qs[0][1].tolist(), top_k=1)  # matrix load + HNSW build (when used)
            dense_s = time.perf_counter() - t0
            print(f"{n:>9} chunks: write {write_s:.1f}s ({n / write_s:,.0f} chunks/s), BM25 index {bm25_s:.1f}s, "
                  f"vectors + HNSW {dense_s:.1f}s (HNSW {'on' if store._snap.ann else 'off: exact'})")  # fmt: skip
            exact = SQLiteChunkStore(store.path, embedding_dim=DIM, ann={"mode": "off"})
            for flt in (None, FILTER):  # warm the filter masks; dense recall@10 of the store vs exact search
                hits = 0
                for _, emb in qs[:100]:
                    a = store.embedding_retrieval(emb.tolist(), filters=flt, top_k=10)
                    b = exact.embedding_retrieval(emb.tolist(), filters=flt, top_k=10)
                    hits += len({d.id for d in a} & {d.id for d in b})
                print(
                    f"           dense recall@10 vs exact ({'filter' if flt else 'no filter'}): "
                    f"{hits / (10 * len(qs[:100])):.3f}"
                )
            exact.close()
            frac = len(store.filter_documents(FILTER)) / n
            peer = None
            if not args.no_peer:
                peer = Peer(texts, vecs, store)
                print(f"           peer build: bm25s {peer.bm25_s:.1f}s, usearch {peer.ann_s:.1f}s")
            del texts
            for label, flt in (("no filter", None), (f"filter {frac:.0%}", FILTER)):
                fast, composed, other = [], [], []
                for query, emb in qs:
                    e = emb.tolist()
                    t = time.perf_counter()
                    store.hybrid_retrieval(query, e, filters=flt, top_k=10, candidates=100)
                    fast.append((time.perf_counter() - t) * 1000)
                    t = time.perf_counter()
                    a = store.bm25_retrieval(query, filters=flt, top_k=100)
                    b = store.embedding_retrieval(e, filters=flt, top_k=100)
                    joiner.run(documents=[a, b])
                    composed.append((time.perf_counter() - t) * 1000)
                    if peer is not None:
                        t = time.perf_counter()
                        peer.hybrid(query, emb, flt is not None)
                        other.append((time.perf_counter() - t) * 1000)
                f50, f95 = percentiles(fast)
                c50, c95 = percentiles(composed)
                line = (f"{n:>9} {label:11} ragconf hybrid_retrieval p50={f50:6.2f}ms p95={f95:6.2f}ms | "
                        f"retrievers+joiner p50={c50:6.2f}ms p95={c95:6.2f}ms")  # fmt: skip
                if other:
                    o50, o95 = percentiles(other)
                    line += f" | bm25s+usearch p50={o50:6.2f}ms p95={o95:6.2f}ms | ratio p50 {f50 / o50:.2f}x"
                print(line, flush=True)
                rows.append((n, label, f50, f95, c50, c95))
            store.close()
            del peer, vecs
            gc.collect()


if __name__ == "__main__":
    main()
