"""Retrieval latency of the embedded store: hybrid top-10 (BM25 top-100 + dense top-100 + RRF), one query at a
time, excluding the query embedding; without and with an access filter (~9% of the chunks), side by side with
a peer (bm25s over the same analysed terms + a usearch HNSW graph with the same settings, fused with the same
RRF) and LanceDB's native hybrid search (FTS + IVF_HNSW_SQ vector index, RRF reranker, prefiltered) in the
same run, as ratios. Also: build times (store write, BM25 index, vectors, HNSW graph), what a *new process* pays
before its first answer (the store's index files), an incremental write of 100 chunks, and the dense recall@10
of the HNSW path against exact search.

Synthetic chunks: Zipf-distributed words (60 per chunk), 384-d unit vectors with a low intrinsic dimension
(like text embeddings: 32 latent factors + noise), access metadata cycling through tenants/classes/groups.

    python benchmarks/bench_store_latency.py                   # 10k and 100k chunks
    python benchmarks/bench_store_latency.py --sizes 1000000   # 1M (minutes to build; several GB of memory)
    pip install lancedb                                        # the LanceDB peer (skipped when missing)
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


class Lance:
    """LanceDB's native hybrid search over the same texts and vectors: its FTS index + an IVF_HNSW_SQ vector
    index (flat below 100k rows), RRF reranker, the access filter as a prefilter on a boolean column."""

    def __init__(self, root: Path, texts: list[str], vecs: np.ndarray) -> None:
        import lancedb
        import pyarrow as pa
        from lancedb.rerankers import RRFReranker

        n = len(vecs)
        allowed = np.array([_allowed(meta_of(k)) for k in range(n)])
        db = lancedb.connect(str(root))
        t0 = time.perf_counter()
        self.tbl = db.create_table(
            "chunks",
            pa.table({"id": pa.array(np.arange(n)), "text": texts, "allowed": pa.array(allowed),
                      "vector": pa.FixedSizeListArray.from_arrays(pa.array(vecs.ravel()), DIM)}),
        )  # fmt: skip
        self.tbl.create_fts_index("text", use_tantivy=False)
        if n >= 100_000:
            self.tbl.create_index(metric="cosine", vector_column_name="vector", index_type="IVF_HNSW_SQ",
                                  num_partitions=max(1, n // 100_000))  # fmt: skip
        self.build_s = time.perf_counter() - t0
        self.reranker = RRFReranker()

    def hybrid(self, query: str, emb: np.ndarray, filtered: bool) -> list[int]:
        q = self.tbl.search(query_type="hybrid").vector(emb).text(query).select(["id"]).limit(10)
        if filtered:
            q = q.where("allowed = true", prefilter=True)
        return [int(r["id"]) for r in q.rerank(self.reranker).to_list()]


class Peer:
    """bm25s (same analysed terms, FTS5-like BM25 'robertson' variant) + usearch HNSW (same settings as the
    store), post-filtered with an oversampled graph search, fused with the same RRF."""

    def __init__(self, texts: list[str], vecs: np.ndarray, store: SQLiteChunkStore, share_graph: bool) -> None:
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
        graph = store._snap.ann
        if share_graph and graph is not None:  # the same graph (keys = row ids = position + 1), not rebuilt
            self.ann = graph.index
            self.offset = 1
        else:
            self.ann.add(np.arange(len(vecs), dtype=np.uint64), vecs, threads=0)
            self.offset = 0
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
        cand = np.asarray(self.ann.search(emb, min(want, self.n), threads=1).keys, dtype=np.int64) - self.offset
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
    ap.add_argument("--no-lance", action="store_true")
    ap.add_argument(
        "--peer-graph-from", type=int, default=500_000, help="from this size the peer searches the store's HNSW "
        "graph (same settings) instead of building its own copy (minutes at 1M)"
    )  # fmt: skip
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
            took = store.warm()  # what ingest does after a write
            hnsw = f"{took['hnsw']:.1f}s" if "hnsw" in took else "off (exact search)"
            print(f"{n:>9} chunks: write {write_s:.1f}s ({n / write_s:,.0f} chunks/s), BM25 index "
                  f"{took['bm25']:.1f}s, vectors {took['dense']:.1f}s, HNSW {hnsw}", flush=True)  # fmt: skip
            t0 = time.perf_counter()  # a new process (a CLI ask): opens the store and answers one query
            fresh = SQLiteChunkStore(store.path, embedding_dim=DIM)
            fresh.hybrid_retrieval(qs[0][0], qs[0][1].tolist(), top_k=10)
            files = "used" if Path(f"{store.path}.idx").is_dir() else "none"
            print(f"           new process, first hybrid query: {time.perf_counter() - t0:.2f}s (index files {files})")
            fresh.close()
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
            peer = lance = None
            if not args.no_peer:
                peer = Peer(texts, vecs, store, share_graph=n >= args.peer_graph_from)
                shared = " (the store's graph, shared)" if peer.offset else ""
                print(f"           peer build: bm25s {peer.bm25_s:.1f}s, usearch {peer.ann_s:.1f}s{shared}", flush=True)
            if not args.no_lance:
                try:
                    lance = Lance(Path(tmp) / f"lance{n}", texts, vecs)
                    print(f"           LanceDB build: {lance.build_s:.1f}s (table, FTS, vector index)", flush=True)
                except ImportError:
                    print("           LanceDB not installed (pip install lancedb): skipped")
            del texts
            for label, flt in (("no filter", None), (f"filter {frac:.0%}", FILTER)):
                fast, composed, other, lan = [], [], [], []
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
                    if lance is not None:
                        t = time.perf_counter()
                        lance.hybrid(query, emb, flt is not None)
                        lan.append((time.perf_counter() - t) * 1000)
                f50, f95 = percentiles(fast)
                c50, c95 = percentiles(composed)
                line = (f"{n:>9} {label:11} ragconf hybrid_retrieval p50={f50:6.2f}ms p95={f95:6.2f}ms | "
                        f"retrievers+joiner p50={c50:6.2f}ms p95={c95:6.2f}ms")  # fmt: skip
                if other:
                    o50, o95 = percentiles(other)
                    line += f" | bm25s+usearch p50={o50:6.2f}ms p95={o95:6.2f}ms ({f50 / o50:.2f}x)"
                if lan:
                    l50, l95 = percentiles(lan)
                    line += f" | LanceDB p50={l50:6.2f}ms p95={l95:6.2f}ms ({f50 / l50:.2f}x)"
                print(line, flush=True)
                rows.append((n, label, f50, f95, c50, c95))
            # an ingest of 100 new chunks into this store: the write, then the indexes of the new generation
            extra = np.random.default_rng(n).normal(size=(100, DIM)).astype(np.float32)
            t0 = time.perf_counter()
            store.replace_docs("bench", [(f"x{k}", "h", [Document(id=f"x{k}", content="w1 w2 w3", meta=meta_of(k),
                               embedding=extra[k].tolist())]) for k in range(100)])  # fmt: skip
            w = time.perf_counter() - t0
            took = store.warm()
            print(f"           +100 chunks: write {w:.2f}s, BM25 {took['bm25']:.1f}s, vectors {took['dense']:.1f}s"
                  + (f", HNSW update {took['hnsw']:.1f}s" if "hnsw" in took else ""), flush=True)  # fmt: skip
            store.close()
            del peer, lance, vecs
            gc.collect()


if __name__ == "__main__":
    main()
