"""What an eval run shows in MLflow besides its aggregate metrics: the evaluation set as a dataset input, a
per-query table, and plots (per-query nDCG@10 and latency histograms; for a sweep, each metric against the swept
value on the parent run). Plots are built with ``matplotlib.figure.Figure`` (Agg, no pyplot, no display)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from ragconf.eval.metrics import METRICS

__all__ = [
    "SWEEP_METRICS",
    "dataset_rows",
    "eval_figures",
    "log_eval_report",
    "log_sweep",
    "per_query_table",
    "swept_values",
    "sweep_figures",
]

#: metrics plotted against the swept value on a sweep's parent run
SWEEP_METRICS = (*METRICS, "p50_ms", "p95_ms", "leakage")


def _digest(files: Sequence[Any]) -> str:
    from ragconf.tracking import sha256_files

    return sha256_files(list(files))


def dataset_rows(result: Any) -> dict[str, list[Any]]:
    """The evaluation set as evaluated: one row per query (id, text, judged document ids, relevant count)."""
    qids = list(result.query_texts)
    judged = [result.judgements.get(q, {}) for q in qids]
    return {
        "query_id": qids,
        "query": [result.query_texts[q] for q in qids],
        "relevant_doc_ids": [json.dumps(sorted(d for d, r in j.items() if r > 0)) for j in judged],
        "relevant": [sum(1 for r in j.values() if r > 0) for j in judged],
    }


def per_query_table(result: Any) -> dict[str, list[Any]]:
    """One row per evaluated query: each retrieval metric (null when no relevant document is visible to the
    evaluating user, so the query is not judged), latency, the retrieved chunk ids (the guard's output: only
    what the user may see) and the failure category of ``eval --explain`` (null without it)."""
    qids = list(result.query_texts)
    table: dict[str, list[Any]] = {"query_id": qids, "judged": [q in result.per_query for q in qids]}
    for m in METRICS:
        table[m] = [result.per_query[q][m] if q in result.per_query else None for q in qids]
    table["latency_ms"] = [round(float(result.latency_ms.get(q, 0.0)), 3) for q in qids]
    table["retrieved_ids"] = [list(result.retrieved.get(q, [])) for q in qids]
    table["failure"] = [result.failures.get(q) for q in qids]
    if result.judged:  # eval.judge: the judge's scores of each query's answer (null: not judged)
        for name in ("faithfulness", "citation_correctness", "answer_relevance"):
            table[f"judge_{name}"] = [(result.judged.get(q) or {}).get(name) for q in qids]
        table["judge_skipped"] = [(result.judged.get(q) or {}).get("skipped") for q in qids]
    return table


def _figure(title: str, xlabel: str, ylabel: str) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0), dpi=100, layout="tight")
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return fig, ax


def eval_figures(result: Any) -> dict[str, Any]:
    """``plots/ndcg_10_hist.png`` (per judged query, with the mean) and ``plots/latency_hist.png`` (with p50
    and p95)."""
    out: dict[str, Any] = {}
    ndcg = [v["ndcg@10"] for v in result.per_query.values()]
    fig, ax = _figure(f"nDCG@10 per query ({len(ndcg)} judged queries)", "nDCG@10", "queries")
    ax.hist(ndcg, bins=[i / 10 for i in range(11)], color="#4c72b0", edgecolor="white")
    if ndcg:
        mean = sum(ndcg) / len(ndcg)
        ax.axvline(mean, color="#c44e52", linestyle="--", label=f"mean {mean:.3f}")
        ax.legend()
    ax.set_xlim(0, 1)
    out["plots/ndcg_10_hist.png"] = fig
    lat = [float(v) for v in result.latency_ms.values()]
    fig, ax = _figure(f"Retrieval latency per query ({len(lat)} queries)", "latency (ms)", "queries")
    ax.hist(lat, bins=min(30, max(5, len(lat) // 3)), color="#55a868", edgecolor="white")
    for name, color in (("p50_ms", "#4c72b0"), ("p95_ms", "#c44e52")):
        if name in result.metrics:
            value = result.metrics[name]
            ax.axvline(value, color=color, linestyle="--", label=f"{name[:3]} {value:.1f} ms")
    if lat:
        ax.legend()
    out["plots/latency_hist.png"] = fig
    return out


def log_eval_report(run: Any, result: Any, *, digest: str | None = None, split: str = "") -> None:
    """Log the dataset input, ``eval/per_query.json`` (an MLflow table) and the plots on an eval run.
    ``digest``: the evaluation set's sha256 (``log_dataset_fingerprint``; computed when not given)."""
    if getattr(run, "run_id", None) is None:
        return
    root = result.dataset
    if root is not None:
        digest = digest or _digest(sorted(p for p in root.rglob("*") if p.is_file()))
        rows = dataset_rows(result)
        # MLflow keeps one dataset per (name, digest) with the profile of its first run: the evaluated queries
        # (eval.max_queries, the split) are part of the digest, so each distinct subset is its own dataset
        subset = hashlib.sha256((digest + "|" + ",".join(map(str, rows["query_id"]))).encode()).hexdigest()
        run.log_input(
            rows,
            name=root.name,
            digest=subset[:32],
            source=str(root.resolve()),
            tags={"ragconf.sha256": digest, "ragconf.split": split},
        )
    run.log_table(per_query_table(result), "eval/per_query.json")
    for path, fig in eval_figures(result).items():
        run.log_figure(fig, path)


def swept_values(combos: Sequence[Sequence[str]]) -> tuple[str, list[str]]:
    """The overrides that differ between a sweep's combinations: (label, one x value per combination). One
    swept key gives its name and values; several give ``a=1 b=2`` per combination."""
    parsed = [dict(o.split("=", 1) for o in c if "=" in o) for c in combos]
    keys = sorted({k for p in parsed for k in p if len({q.get(k) for q in parsed}) > 1})
    if len(keys) == 1:
        return keys[0], [p.get(keys[0], "") for p in parsed]
    values = [" ".join(f"{k}={p.get(k, '')}" for k in keys) or str(i) for i, p in enumerate(parsed)]
    return " ".join(keys) or "run", values


def sweep_figures(results: Sequence[tuple[Sequence[str], Any]]) -> dict[str, Any]:
    """One ``plots/sweep_<metric>.png`` per metric: its value in each child run against the swept value
    (numbers on a numeric axis, anything else as categories in sweep order)."""
    label, xs = swept_values([c for c, _ in results])
    try:
        xnum: list[Any] = [float(x) for x in xs]
        numeric = True
    except ValueError:
        xnum, numeric = list(range(len(xs))), False
    out: dict[str, Any] = {}
    for m in SWEEP_METRICS:
        ys = [r.metrics.get(m) for _, r in results]
        if all(y is None for y in ys):
            continue
        pts = sorted((x, y) for x, y in zip(xnum, ys, strict=True) if y is not None)
        fig, ax = _figure(f"{m} vs {label}", label, m)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color="#4c72b0")
        if not numeric:
            ax.set_xticks(list(range(len(xs))), xs, rotation=20, ha="right")
        out[f"plots/sweep_{m.replace('@', '_')}.png"] = fig
    return out


def log_sweep(parent: Any, results: Sequence[tuple[Sequence[str], Any]]) -> None:
    """On a sweep's parent run: ``sweep.json`` (an MLflow table: the swept value, child run id and each metric
    per child) and one plot per metric against the swept value. Nothing for fewer than two finished children."""
    if parent is None or getattr(parent, "run_id", None) is None or len(results) < 2:
        return
    label, xs = swept_values([c for c, _ in results])
    table: dict[str, list[Any]] = {label: xs, "run_id": [r.run_id for _, r in results]}
    for m in SWEEP_METRICS:
        table[m] = [r.metrics.get(m) for _, r in results]
    parent.log_table(table, "sweep.json")
    parent.set_tags({"ragconf.swept": label})
    for path, fig in sweep_figures(results).items():
        parent.log_figure(fig, path)
