"""Zero-leakage check at scale: N random (principal, query) cases through the real `ask` path and the
pushed-down filters, on a generated corpus with random access fields; counts leaks against an oracle
written from the policy's description (tests/policy/test_engine.py::visible). Prints cases and leaks.

    python benchmarks/bench_leakage.py --cases 10000
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=10_000)
    ap.add_argument("--docs", type=int, default=80)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    from ragconf.runtime import RagApp
    from ragconf.types import CLASSIFICATIONS, Principal
    from tests.policy.test_engine import GROUPS, TENANTS, visible
    from tests.policy.test_leakage import WORDS, make_corpus

    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        docs = Path(tmp) / "docs"
        docs.mkdir()
        metas = make_corpus(docs, n=args.docs, seed=args.seed)
        rag = RagApp.from_overrides(
            [
                "corpus=files",
                f"corpus.path={docs}",
                "tracking=disabled",
                f"project.workdir={tmp}/work",
                "policy.audit.sink=none",
                "identity=anonymous",
            ]
        )
        rag.ingest()
        vocab = [*WORDS, *(f"CANARY{i:03d}" for i in range(args.docs)), "secret", "token"]
        leaks = retrieved = 0
        t0 = time.perf_counter()
        for i in range(args.cases):
            p = Principal(
                f"p{i}", tuple(rng.sample(GROUPS, rng.randint(0, 3))), rng.choice(TENANTS), rng.choice(CLASSIFICATIONS)
            )
            q = " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 5)))
            if i % 2:
                answer = rag.ask(q, p)
                blob = json.dumps({k: v for k, v in answer.to_dict().items() if k != "question"})
                ids = [d["doc_id"] for d in answer.documents] + [c["doc_id"] for c in answer.citations]
                canaries = [f"CANARY{int(d[3:6]):03d}" for d, m in metas.items() if not visible(p.to_input(), m)]
                leaks += sum(1 for c in canaries if c in blob)
            else:
                flt = rag.policy.retrieval_filter(p, {"query": q}).filters
                ids = [d.meta["doc_id"] for d in rag.store.bm25_retrieval(q, filters=flt, top_k=50)]
            retrieved += len(ids)
            leaks += sum(1 for d in ids if not visible(p.to_input(), metas[d]))
        secs = time.perf_counter() - t0
        print(
            f"{args.cases} cases ({args.cases // 2} full asks, {args.cases - args.cases // 2} filter-only "
            f"retrievals), {retrieved} documents returned, {leaks} leaks, {secs:.1f}s"
        )
        rag.close()
        if leaks:
            sys.exit(1)


if __name__ == "__main__":
    main()
