"""Evaluation: retrieval metrics (trec_eval semantics), answer metrics, quality gates."""

from ragconf.eval.answer_metrics import citation_precision, reference_overlap
from ragconf.eval.gates import Gate, GateResult, check_gates, parse_gates
from ragconf.eval.metrics import METRICS, evaluate_run, per_query

__all__ = [
    "METRICS",
    "Gate",
    "GateResult",
    "check_gates",
    "citation_precision",
    "evaluate_run",
    "parse_gates",
    "per_query",
    "reference_overlap",
]
