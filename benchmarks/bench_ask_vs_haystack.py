"""`RagApp.ask` on the handbook example against a plain Haystack pipeline doing the same retrieval and the same
extractive answer without any governance (issue 10 target: RagApp p50 <= 1.10x the plain pipeline).

    python benchmarks/bench_ask_vs_haystack.py [--rounds 40] [--user alice] [--retrieval-cache] [--fresh-decisions]
        [--profile] [--json]

The handbook is ingested once (untimed) into a temporary workdir with the default config. Then:

(a) **RagApp**: ``RagApp.from_overrides([project.workdir=TMP, tracking=disabled, cache.retrieval=0])`` and
    ``rag.ask(question, user)`` as a Python caller uses it: the policy filter pushed into both retrievers, the
    access guard's per-document check, the routing and output decisions (each audited to ``audit.jsonl``), PII
    redaction when the output policy requires it, the request's trace spans, ``Answer`` with citations and
    document records. Policy decisions are reused by the engine for inputs equal in what the policy reads (the
    default; ``--fresh-decisions`` evaluates every one: the cost for a principal or a set of passages never seen
    before). The retrieval cache is off (``cache.retrieval=0``) so both sides do the same retrieval work on every
    call; ``--retrieval-cache`` keeps the default (256 entries) to show what a repeated question costs then (the
    retrievers are skipped, the policy decisions are not).
(b) **plain Haystack**: one ``haystack.Pipeline`` built with ``add_component``/``connect`` from new instances of
    the same classes with the same parameters as the example's stages (``ragconf.compile._instantiate``, the
    code RagApp builds its own with) on the same store object: ``query_embedder`` (RagconfTextEmbedder, same
    ONNX session) -> ``bm25`` + ``dense`` (top 100 each) -> ``fuse`` (DocumentJoiner, RRF, top 10) ->
    ``answer`` (ExtractiveAnswerComposer, max 3 sentences), run with ``pipeline.run({...})``. No policy filter,
    no access guard, no routing/output decisions, no audit, no PII redaction, no ``max_passages`` cut (the
    composer gets all 10 fused passages, RagApp's at most 5), no tracking, and Haystack's default NullTracer
    (ragconf installs its span recorder as Haystack's global tracer; it is swapped out around every baseline
    call, as a plain Haystack process would not have it).

Both sides use their own query-embedding LRU (same class, same size), so after the warm-up both serve the query
vector from it. The same questions (the 12 handbook eval queries) are asked in rounds; within a round each
question is asked of both, the order alternating per question and per round, so load drift on the shared
machine hits both alike. p50/p95 are over all timed calls of each; the ratio is p50(a) / p50(b), with the
median of the per-pair ratios beside it.

The breakdown runs a second, separate set of interleaved rounds where the baseline also runs under ragconf's
span recorder, so both sides report per-component times under the same tracer: RagApp's step spans (policy
decisions, guard, generation stage, redaction) next to the baseline's component spans. ``--profile`` adds a
cProfile of RagApp's calls (top functions by own time).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))] if s else float("nan")


def questions() -> list[str]:
    path = ROOT / "examples" / "handbook" / "eval" / "queries.jsonl"
    return [json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip()]


def build_baseline(rag: Any) -> Any:
    """A plain ``haystack.Pipeline``: the example's retrieval stage + its generator stage, ungoverned."""
    from haystack import Pipeline

    from ragconf.compile import BuildContext, _instantiate

    ctx = BuildContext(store=rag.store, embedder=rag.spec.embedder)
    pipe = Pipeline()
    retrieval, generator = rag.spec.pipeline, rag.spec.generator
    for name, cspec in retrieval.components.items():
        pipe.add_component(name, _instantiate(name, cspec, "pipeline", ctx)[0])
    for conn in retrieval.connections:
        pipe.connect(conn.sender, conn.receiver)
    for name, cspec in generator.components.items():
        pipe.add_component(name, _instantiate(name, cspec, "generator", ctx)[0])
    for conn in generator.connections:
        pipe.connect(conn.sender, conn.receiver)
    # retrieval output -> the generator's `documents` input(s)
    for target in generator.inputs.get("documents", []):
        pipe.connect(retrieval.output, target)
    query_targets = [*retrieval.inputs.get("query", []), *generator.inputs.get("query", [])]

    def run(question: str) -> str:
        data: dict[str, dict[str, Any]] = {}
        for ref in query_targets:
            comp, sock = ref.split(".", 1)
            data.setdefault(comp, {})[sock] = question
        out = pipe.run(data)
        comp, sock = generator.output.split(".", 1)
        replies = out[comp][sock]
        return str(replies[0] if replies else "")

    run.pipeline = pipe  # type: ignore[attr-defined]
    return run


@contextlib.contextmanager
def null_tracer() -> Iterator[None]:
    """Haystack's default tracer for the duration (a plain Haystack process has no ragconf span recorder)."""
    from haystack import tracing
    from haystack.tracing.tracer import NullTracer

    saved = tracing.tracer.actual_tracer
    tracing.tracer.actual_tracer = NullTracer()
    try:
        yield
    finally:
        tracing.tracer.actual_tracer = saved


@contextlib.contextmanager
def stock_haystack_copy(on: bool) -> Iterator[None]:
    """While on: Haystack's own per-leaf input copy instead of the fast equal one ragconf installs
    (``ragconf.compile.fast_deepcopy``), i.e. the baseline as a plain Haystack user runs it."""
    if not on:
        yield
        return
    from haystack.core.pipeline import base, pipeline, utils

    saved = (base._deepcopy_with_exceptions, pipeline._deepcopy_with_exceptions)
    base._deepcopy_with_exceptions = pipeline._deepcopy_with_exceptions = utils._deepcopy_with_exceptions
    try:
        yield
    finally:
        base._deepcopy_with_exceptions, pipeline._deepcopy_with_exceptions = saved


def _timed_rounds(
    rag: Any,
    base: Any,
    qs: list[str],
    user: str,
    rounds: int,
    *,
    traced_baseline: bool,
    profiler: Any = None,
    stock: bool = False,
) -> tuple[list[float], list[float], list[list[dict[str, Any]]], list[list[dict[str, Any]]]]:
    from ragconf import spans

    a_ms: list[float] = []
    b_ms: list[float] = []
    a_traces: list[list[dict[str, Any]]] = []
    b_traces: list[list[dict[str, Any]]] = []

    def run_a(q: str) -> None:
        if profiler is not None:
            profiler.enable()
        t0 = time.perf_counter()
        ans = rag.ask(q, user)
        dt = (time.perf_counter() - t0) * 1000
        if profiler is not None:
            profiler.disable()
        a_ms.append(dt)
        a_traces.append(ans.trace)

    def run_b(q: str) -> None:
        if traced_baseline:
            with spans.collect("baseline") as trace:
                t0 = time.perf_counter()
                base(q)
                dt = (time.perf_counter() - t0) * 1000
            b_traces.append(trace)
        else:
            with null_tracer(), stock_haystack_copy(stock):
                t0 = time.perf_counter()
                base(q)
                dt = (time.perf_counter() - t0) * 1000
        b_ms.append(dt)

    for r in range(rounds):
        for i, q in enumerate(qs):
            if (r + i) % 2 == 0:
                run_a(q)
                run_b(q)
            else:
                run_b(q)
                run_a(q)
    return a_ms, b_ms, a_traces, b_traces


def _span_medians(traces: list[list[dict[str, Any]]]) -> dict[str, float]:
    """Median duration per span name over the traces (a name missing from a trace counts 0 there)."""
    per: dict[str, list[float]] = defaultdict(list)
    for trace in traces:
        sums: dict[str, float] = defaultdict(float)
        for s in trace:
            sums[s["name"]] += float(s.get("duration_ms") or 0.0)
        for name, v in sums.items():
            per[name].append(v)
    n = len(traces)
    return {name: statistics.median(v + [0.0] * (n - len(v))) for name, v in per.items()}


def _unattributed(traces: list[list[dict[str, Any]]]) -> float:
    """Median of root span time not covered by the root's direct children (ragconf's own glue code)."""
    out = []
    for trace in traces:
        root = next(s for s in trace if s["parent_id"] is None)
        kids = sum(float(s["duration_ms"]) for s in trace if s["parent_id"] == root["span_id"])
        out.append(float(root["duration_ms"]) - kids)
    return statistics.median(out)


def _delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    hits = after.get("hits", 0.0) - before.get("hits", 0.0)
    misses = after.get("misses", 0.0) - before.get("misses", 0.0)
    return {"reused": hits, "evaluated": misses, "share": round(hits / (hits + misses), 3) if hits + misses else 0.0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=40, help="timed rounds over the questions")
    ap.add_argument("--breakdown-rounds", type=int, default=10)
    ap.add_argument("--user", default="alice")
    ap.add_argument("--retrieval-cache", action="store_true", help="keep RagApp's default retrieval cache")
    ap.add_argument("--profile", action="store_true", help="cProfile RagApp's calls in the breakdown rounds")
    ap.add_argument(
        "--fresh-decisions",
        action="store_true",
        help="evaluate every policy decision (no reuse of remembered results): the cost for inputs never seen",
    )
    ap.add_argument(
        "--stock-haystack",
        action="store_true",
        help="time the baseline with Haystack's own input copy (ragconf installs a faster equal one process-wide)",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")

    from ragconf.runtime import RagApp

    qs = questions()
    with tempfile.TemporaryDirectory(prefix="bench-ask-") as tmp:
        overrides = [f"project.workdir={tmp}", "tracking=disabled"]
        if not args.retrieval_cache:
            overrides.append("cache.retrieval=0")
        rag = RagApp.from_overrides(overrides)
        t0 = time.perf_counter()
        summary = rag.ingest()
        ingest_s = time.perf_counter() - t0
        base = build_baseline(rag)
        if args.fresh_decisions:
            rag.policy.engine._memo = None
        for _ in range(2):  # warm both: models, sessions, compiled plans, query-embedding caches, redaction
            for q in qs:
                rag.ask(q, args.user)
                with null_tracer():
                    base(q)
        from ragconf.cache import cache_stats
        from ragconf.policy import redact

        memo0 = dict(cache_stats().get("policy_decisions", {}))
        red0 = dict(redact.stats)
        a_ms, b_ms, _, _ = _timed_rounds(
            rag, base, qs, args.user, args.rounds, traced_baseline=False, stock=args.stock_haystack
        )
        memo1 = dict(cache_stats().get("policy_decisions", {}))
        red1 = dict(redact.stats)
        profiler = None
        if args.profile:
            import cProfile

            profiler = cProfile.Profile()
        _, _, a_tr, b_tr = _timed_rounds(
            rag, base, qs, args.user, args.breakdown_rounds, traced_baseline=True, profiler=profiler
        )
        sample = rag.ask(qs[3], args.user)
        rag.close()

    pairs = [a / b for a, b in zip(a_ms, b_ms, strict=True)]
    a50, b50 = statistics.median(a_ms), statistics.median(b_ms)
    a_steps, b_steps = _span_medians(a_tr), _span_medians(b_tr)
    out: dict[str, Any] = {
        "user": args.user,
        "questions": len(qs),
        "rounds": args.rounds,
        "calls_each": len(a_ms),
        "retrieval_cache": args.retrieval_cache,
        "fresh_decisions": args.fresh_decisions,
        "chunks_indexed": summary.chunks_written,
        "ingest_s": round(ingest_s, 2),
        "ragapp_ms": {"p50": round(a50, 2), "p95": round(_pct(a_ms, 0.95), 2)},
        "haystack_ms": {"p50": round(b50, 2), "p95": round(_pct(b_ms, 0.95), 2)},
        "ratio_p50": round(a50 / b50, 3),
        "ratio_p95": round(_pct(a_ms, 0.95) / _pct(b_ms, 0.95), 3),
        "ratio_median_of_pairs": round(statistics.median(pairs), 3),
        "target_met": a50 / b50 <= 1.10,
        # policy decisions the engine reused in the timed calls (every one is still made and audited)
        "decisions_reused": "off" if args.fresh_decisions else _delta(memo0, memo1),
        "redaction_segments": {k: red1.get(k, 0) - red0.get(k, 0) for k in red1},
        "breakdown_ragapp_ms": {k: round(v, 3) for k, v in sorted(a_steps.items(), key=lambda kv: -kv[1])},
        "breakdown_ragapp_unattributed_ms": round(_unattributed(a_tr), 3),
        "breakdown_haystack_ms": {k: round(v, 3) for k, v in sorted(b_steps.items(), key=lambda kv: -kv[1])},
        "sample": {"question": sample.question, "answer": sample.answer, "redacted": sample.redacted},
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for k, v in out.items():
            if isinstance(v, dict) and k.startswith("breakdown"):
                print(f"{k}:")
                for name, ms in v.items():
                    print(f"    {name:36} {ms:8.3f}")
            else:
                print(f"{k:32} {v}")
    if profiler is not None:
        import pstats

        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(35)
    return 0


if __name__ == "__main__":
    sys.exit(main())
