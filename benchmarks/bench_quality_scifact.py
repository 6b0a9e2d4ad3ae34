"""Retrieval quality on BEIR SciFact (test split, 300 queries): BM25-only, dense-only and hybrid, nDCG@10
scored with ir-measures (the reference implementation), through the real ragconf pipelines and store.

    python benchmarks/bench_quality_scifact.py [--data ../shared/data/beir/scifact] [--workdir .bench]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "beir" / "scifact"))
    ap.add_argument("--workdir", default=str(ROOT / ".bench"))
    ap.add_argument("--pipelines", default="bm25,dense,hybrid")
    args = ap.parse_args()

    import ir_measures
    from ir_measures import RR, R, nDCG

    from ragconf.ingest.beir import load_qrels, load_queries
    from ragconf.runtime import RagApp

    base = [
        "corpus=beir",
        f"corpus.path={args.data}",
        "identity=anonymous",
        "tracking=disabled",
        f"project.workdir={args.workdir}",
        "policy.audit.sink=none",
    ]
    rag = RagApp.from_overrides(base)
    t0 = time.perf_counter()
    summary = rag.ingest(progress=None)
    secs = time.perf_counter() - t0
    if summary.chunks_written:
        print(
            f"ingest: {summary.chunks_written} chunks in {secs:.1f}s = {summary.chunks_written / secs:.1f} chunks/s; "
            f"embedding {summary.embed_seconds / secs:.0%} of the time"
        )
    rag.close()
    queries = load_queries(Path(args.data) / "queries.jsonl")
    qrels = load_qrels(args.data, "test")
    qrel_list = [ir_measures.Qrel(q, d, r) for q, ds in qrels.items() for d, r in ds.items()]
    for name in args.pipelines.split(","):
        over = [*base, f"pipeline={name}"]
        rag = RagApp.from_overrides(over)
        principal = rag.principal("anonymous")
        run = []
        lat = []
        for qid in qrels:
            t = time.perf_counter()
            docs, _, _ = rag.retrieve(queries[qid], principal, top_k=100)
            lat.append((time.perf_counter() - t) * 1000)
            seen: set[str] = set()
            for rank, d in enumerate(docs):
                did = d.meta["doc_id"]
                if did not in seen:
                    seen.add(did)
                    run.append(ir_measures.ScoredDoc(qid, did, float(len(docs) - rank)))
        scores = ir_measures.calc_aggregate([nDCG @ 10, R @ 100, RR @ 10], qrel_list, run)
        lat.sort()
        print(
            f"{name:7} nDCG@10={scores[nDCG @ 10]:.4f} R@100={scores[R @ 100]:.4f} "
            f"MRR@10={scores[RR @ 10]:.4f}  latency p50={lat[len(lat) // 2]:.1f}ms "
            f"p95={lat[int(0.95 * (len(lat) - 1))]:.1f}ms (incl. query embedding)"
        )
        rag.close()


if __name__ == "__main__":
    main()
