"""Policy overhead per `ask` with the embedded engine: filter decision + batched check of 100 candidates +
routing + output, p50/p95; plus the per-document check cost and an un-deduplicated worst case.

    python benchmarks/bench_policy.py
"""

from __future__ import annotations

import random
import statistics
import time
from pathlib import Path

from haystack import Document

from ragconf.policy import AuditLog, PolicyService, RegoEngine
from ragconf.types import CLASSIFICATIONS, Principal

BUNDLE = Path(__file__).resolve().parents[1] / "policies"


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p * (len(xs) - 1))))]


def main() -> None:
    rng = random.Random(0)
    svc = PolicyService(RegoEngine(BUNDLE), AuditLog(None), BUNDLE)
    p = Principal("alice", ("employees", "sre"), "acme", "confidential")
    groups = ["hr", "sre", "eng", "sales", "employees"]

    def docs(unique: bool) -> list[Document]:
        out = []
        for i in range(100):
            meta = {
                "tenant": rng.choice(["acme", "globex"]),
                "classification": rng.choice(CLASSIFICATIONS),
                "acl_groups": rng.sample(groups, 2),
            }
            if unique:
                meta["acl_groups"] = [*meta["acl_groups"], f"g{i}"]
            out.append(Document(id=str(i), content="x", meta=meta))
        return out

    profiles = [
        {"name": "openai", "locality": "remote", "provider": "openai", "region": "us"},
        {"name": "extractive", "locality": "local"},
    ]
    # one ask: the filter, the guard's check of the fused top-10, routing and output rules
    total = []
    for _ in range(300):
        top10 = docs(True)[:10]
        t0 = time.perf_counter()
        svc.retrieval_filter(p, {"query": "q"})
        d = svc.check_documents(p, top10, {"query": "q"})
        svc.route(p, {}, d.allowed, profiles)
        svc.output_rules(p, {}, d.allowed)
        total.append((time.perf_counter() - t0) * 1000)
    print(
        f"all decisions of one ask (filter + guard on top-10 + routing + output): "
        f"p50={statistics.median(total):.2f}ms p95={pct(total, 0.95):.2f}ms"
    )
    for label, unique in (("shared access signatures", False), ("100 distinct signatures", True)):
        check = []
        for _ in range(200):
            cands = docs(unique)
            t1 = time.perf_counter()
            svc.check_documents(p, cands, {"query": "q"})
            check.append((time.perf_counter() - t1) * 1000)
        print(
            f"check of 100 candidates, {label}: p50={statistics.median(check):.2f}ms "
            f"p95={pct(check, 0.95):.2f}ms ({statistics.median(check) * 10:.0f}us per document)"
        )
    share_of_ask()


def share_of_ask(n: int = 100) -> None:
    """Policy time inside real `ask` calls on the handbook example, from each ask's trace spans."""
    import os
    import tempfile

    from ragconf.runtime import RagApp

    policy_spans = ("policy.access.filter", "component.access_guard", "policy.routing", "policy.output")
    questions = ["When should we fail over the primary database?", "How do I claim expenses?", "wifi password"]
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            rag = RagApp.from_overrides([])
            rag.ingest()
            for q in questions:  # warm: models, sessions, compiled plans
                rag.ask(q, "alice")
            pol, tot = [], []
            for i in range(n):
                ans = rag.ask(questions[i % len(questions)], "alice")
                by = {s["name"]: s["duration_ms"] for s in ans.trace}
                pol.append(sum(by.get(k, 0.0) for k in policy_spans))
                tot.append(by["ask"])
            rag.close()
        finally:
            os.chdir(cwd)
    share = sum(pol) / sum(tot)
    print(
        f"handbook ask (hybrid, extractive), {n} asks: policy p50={statistics.median(pol):.2f}ms "
        f"p95={pct(pol, 0.95):.2f}ms of ask p50={statistics.median(tot):.1f}ms p95={pct(tot, 0.95):.1f}ms "
        f"-> policy share {share:.1%} of total ask time"
    )


if __name__ == "__main__":
    main()
