"""Retrieval metrics with trec_eval semantics (checked against ir-measures in the tests).

Ranking: score descending, ties broken by document id descending (trec_eval). Every query in the qrels is
averaged; a query missing from the run, or without any relevant document, scores 0.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["METRICS", "evaluate_run", "per_query"]

METRICS = ("ndcg@10", "recall@10", "recall@100", "mrr@10", "map")


def _ranked(docs: dict[str, float]) -> list[str]:
    return [d for d, _ in sorted(docs.items(), key=lambda kv: (-kv[1], _desc(kv[0])))]


class _desc(str):  # noqa: N801 - sort key: reverses string order
    def __lt__(self, other: str) -> bool:
        return str.__gt__(self, other)


def per_query(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for qid, rels in qrels.items():
        relevant = {d: r for d, r in rels.items() if r > 0}
        if not relevant:  # judged but nothing relevant: every metric is 0 (as trec_eval / ir-measures)
            out[qid] = dict.fromkeys(METRICS, 0.0)
            continue
        ranking = _ranked(run.get(qid, {}))
        gains = [relevant.get(d, 0) for d in ranking]
        dcg = sum(g / math.log2(i + 2) for i, g in enumerate(gains[:10]))
        ideal = sorted(relevant.values(), reverse=True)[:10]
        idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
        # MRR@10 follows the MS MARCO evaluator that ir-measures uses for RR@k: ties by document id ascending
        rr_ranking = [d for d, _ in sorted(run.get(qid, {}).items(), key=lambda kv: (-kv[1], kv[0]))]
        rr = next((1.0 / (i + 1) for i, d in enumerate(rr_ranking[:10]) if d in relevant), 0.0)
        hits, ap = 0, 0.0
        for i, d in enumerate(ranking):
            if d in relevant:
                hits += 1
                ap += hits / (i + 1)
        out[qid] = {
            "ndcg@10": dcg / idcg if idcg else 0.0,
            "recall@10": sum(1 for d in ranking[:10] if d in relevant) / len(relevant),
            "recall@100": sum(1 for d in ranking[:100] if d in relevant) / len(relevant),
            "mrr@10": rr,
            "map": ap / len(relevant),
        }
    return out


def evaluate_run(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Mean of each metric over the judged queries."""
    pq = per_query(qrels, run)
    if not pq:
        return {m: 0.0 for m in METRICS}
    return {m: sum(v[m] for v in pq.values()) / len(pq) for m in METRICS}
