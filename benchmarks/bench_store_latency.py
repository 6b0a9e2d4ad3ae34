"""Retrieval latency of the embedded store: hybrid top-10 (BM25 top-100 + dense top-100 + RRF), one query at a
time, excluding the query embedding; with and without an access filter. Synthetic chunks: Zipf-distributed
words, random unit 384-d vectors, random access metadata.

    python benchmarks/bench_store_latency.py            # 10k and 100k chunks
    python benchmarks/bench_store_latency.py --big      # also 1M chunks
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from haystack import Document
from haystack.components.joiners import DocumentJoiner

from ragconf.store.sqlite import SQLiteChunkStore

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


def build(path: Path, n: int, rng: np.random.Generator) -> SQLiteChunkStore:
    store = SQLiteChunkStore(path, embedding_dim=DIM)
    batch = 5000
    ranks = np.arange(1, len(VOCAB) + 1)
    probs = (1 / ranks) / (1 / ranks).sum()
    for start in range(0, n, batch):
        m = min(batch, n - start)
        words = rng.choice(len(VOCAB), size=(m, 60), p=probs)
        vecs = rng.normal(size=(m, DIM)).astype(np.float32)
        items = []
        for i in range(m):
            k = start + i
            meta = {
                "doc_id": f"d{k}",
                "tenant": ["acme", "globex", None][k % 3],
                "classification": ["public", "internal", "confidential"][k % 3 if k % 7 else 0],
                "acl_groups": [f"g{k % 10}"],
            }
            text = " ".join(VOCAB[j] for j in words[i])
            items.append((f"d{k}", "h", [Document(id=f"c{k}", content=text, meta=meta, embedding=vecs[i].tolist())]))
        store.replace_docs("bench", items)
    return store


def measure(store: SQLiteChunkStore, rng: np.random.Generator, flt: dict | None, n_queries: int = 200) -> list[float]:
    joiner = DocumentJoiner(join_mode="reciprocal_rank_fusion", top_k=10)
    lat = []
    for _ in range(n_queries):
        q = " ".join(VOCAB[j] for j in rng.integers(0, 3000, size=5))
        emb = rng.normal(size=DIM).astype(np.float32).tolist()
        t0 = time.perf_counter()
        a = store.bm25_retrieval(q, filters=flt, top_k=100)
        b = store.embedding_retrieval(emb, filters=flt, top_k=100)
        joiner.run(documents=[a, b])
        lat.append((time.perf_counter() - t0) * 1000)
    return sorted(lat)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--big", action="store_true")
    args = ap.parse_args()
    sizes = [10_000, 100_000] + ([1_000_000] if args.big else [])
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            t0 = time.perf_counter()
            store = build(Path(tmp) / f"s{n}.sqlite", n, rng)
            build_s = time.perf_counter() - t0
            measure(store, rng, None, 5)  # warm: load vectors, first filter mask
            measure(store, rng, FILTER, 5)
            for label, flt in (("no filter", None), ("access filter", FILTER)):
                lat = measure(store, rng, flt)
                print(
                    f"{n:>9} chunks  {label:13}  p50={lat[len(lat) // 2]:6.1f}ms  "
                    f"p95={lat[int(0.95 * (len(lat) - 1))]:6.1f}ms   (built in {build_s:.0f}s)"
                )
            store.close()


if __name__ == "__main__":
    main()
