"""Native MLflow traces from ragconf's span records (:mod:`ragconf.spans`).

A request records its spans in memory while it runs (microseconds, no mlflow import); the tracker's writer (a
background thread, the CLI's spool writer process, or an eval run) turns them into an MLflow trace afterwards
with the recorded start/end times, so the Traces tab shows the real latencies. The trace is linked to its run
(``mlflow.sourceRun`` metadata: the run's Traces tab and ``mlflow.search_traces(run_id=...)``) and tagged with
the ragconf run key. Span attributes are what the records hold: decision ids, document counts, and ids only of
documents the principal may see (the access guard's output).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["CONTENT_MODES", "log_trace", "span_type"]

CONTENT_MODES = ("ids", "redacted", "full")
_LOCK = threading.Lock()  # the fluent tracing API uses the process-wide tracking URI


def span_type(record: Mapping[str, Any]) -> str:
    """MLflow span type of a span record (component class names and ragconf step names)."""
    name = str(record.get("name") or "")
    kind = str((record.get("attributes") or {}).get("type") or "")
    if name.startswith("component."):
        for needle, value in (
            ("AccessGuard", "GUARDRAIL"),
            ("Retriever", "RETRIEVER"),
            ("Embedder", "EMBEDDING"),
            ("Generator", "LLM"),
            ("Joiner", "RERANKER"),
            ("Ranker", "RERANKER"),
            ("Builder", "PARSER"),
        ):
            if needle in kind:
                return value
        return "UNKNOWN"
    if name.startswith("policy."):
        return "GUARDRAIL"
    if name == "generation":
        return "LLM"
    if name == "retrieval":
        return "RETRIEVER"
    return "CHAIN"


def _attrs(record: Mapping[str, Any]) -> dict[str, Any]:
    out = {str(k): v for k, v in (record.get("attributes") or {}).items() if v is not None}
    if record.get("duration_ms") is not None:
        out["latency_ms"] = round(float(record["duration_ms"]), 3)
    if str(record.get("status", "ok")) != "ok":
        out["error"] = str(record["status"])
    return out


def log_trace(
    uri: str,
    experiment_id: str,
    run_id: str | None,
    spans: list[dict[str, Any]],
    *,
    tags: Mapping[str, str] | None = None,
    inputs: Any = None,
    outputs: Any = None,
) -> str | None:
    """Write ``spans`` (records of one request, root first) as one MLflow trace; returns its trace id."""
    if not spans:
        return None
    import mlflow
    from mlflow.entities import SpanStatusCode
    from mlflow.tracing.constant import TraceMetadataKey

    with _LOCK:
        if mlflow.get_tracking_uri() != uri:
            mlflow.set_tracking_uri(uri)
        live: dict[Any, Any] = {}
        root = None
        for rec in spans:
            entry = live.get(rec.get("parent_id"))
            parent = entry[0] if entry is not None else root  # an orphan record hangs under the root
            is_root = root is None
            span = mlflow.start_span_no_context(
                str(rec.get("name")),
                span_type=span_type(rec),
                parent_span=parent,
                inputs=inputs if is_root else None,
                attributes=_attrs(rec),
                tags=dict(tags or {}) if is_root else None,
                metadata={TraceMetadataKey.SOURCE_RUN: run_id} if is_root and run_id else None,
                experiment_id=experiment_id if is_root else None,
                start_time_ns=int(rec.get("start_ns") or 0) or None,
            )
            if is_root:
                root = span
            live[rec.get("span_id")] = (span, rec)
        with _one_export():
            for span, rec in reversed(list(live.values())):  # children end before their parents
                if span is root and outputs is not None:
                    span.set_outputs(outputs)
                failed = str(rec.get("status", "ok")) != "ok"
                span.end(
                    status=SpanStatusCode.ERROR if failed else SpanStatusCode.OK,
                    end_time_ns=int(rec.get("end_ns") or 0) or None,
                )
        return str(root.trace_id) if root is not None else None


@contextlib.contextmanager
def _one_export() -> Iterator[None]:
    """Export the spans ended in the block in one call to MLflow's exporter instead of one per span.

    MLflow's span processor hands every ended span to its exporter at once, and against a SQL store each
    call is a database transaction (``log_spans``): 9 spans cost ~90 ms of a ~220 ms ask run. The exporter
    takes a sequence (grouped by experiment, the trace exported once its root is in it), so the spans of
    a replayed trace, which all end here, go in one call. Any other thread's spans ended meanwhile join the
    same call. Without the (private) exporter lookup, spans export one by one as before."""
    try:
        from mlflow.tracing.provider import _get_trace_exporter

        exporter = _get_trace_exporter()
    except Exception:  # another MLflow version: the per-span export still works
        exporter = None
    if exporter is None or not callable(getattr(exporter, "export", None)):
        yield
        return
    pending: list[Any] = []
    exporter.export = pending.extend  # an instance attribute shadows the method
    try:
        yield
    finally:
        del exporter.export
        if pending:
            exporter.export(pending)


def log_feedback(uri: str, trace_id: str, *, rating: int, comment: str, user: str) -> str:
    """A user's rating of an answer as an MLflow assessment (feedback ``user_rating``, source HUMAN/user) on the
    ask's trace. Returns the assessment id."""
    import mlflow
    from mlflow.entities import AssessmentSource

    with _LOCK:
        if mlflow.get_tracking_uri() != uri:
            mlflow.set_tracking_uri(uri)
        assessment = mlflow.log_feedback(
            trace_id=trace_id,
            name="user_rating",
            value=rating,
            source=AssessmentSource(source_type="HUMAN", source_id=user),
            rationale=comment or None,
        )
    return str(assessment.assessment_id)


def log_judge_feedback(uri: str, trace_id: str, verdicts: Mapping[str, float], *, model: str) -> int:
    """The judge model's scores of an evaluated answer as MLflow assessments (feedback ``judge_<metric>``,
    source LLM_JUDGE/model) on the query's trace. Returns how many were logged."""
    import mlflow
    from mlflow.entities import AssessmentSource

    n = 0
    with _LOCK:
        if mlflow.get_tracking_uri() != uri:
            mlflow.set_tracking_uri(uri)
        for name, value in verdicts.items():
            mlflow.log_feedback(
                trace_id=trace_id,
                name=f"judge_{name}",
                value=float(value),
                source=AssessmentSource(source_type="LLM_JUDGE", source_id=model),
            )
            n += 1
    return n
