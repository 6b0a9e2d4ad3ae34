"""Trace spans of one request: every Haystack component run plus ragconf's own steps (policy decisions,
guard, generation), with latency, retrieved document ids and policy decision ids.

A :class:`SpanRecorder` is installed as Haystack's tracer once per process. It records only inside
:func:`collect` (a context variable holds the active trace), so pipelines run outside a traced request pay one
context-variable lookup per component. Any tracer that was enabled before (OpenTelemetry, Datadog, ...) keeps
receiving every span: the recorder wraps it.

Only ids and sizes are recorded, never document text or queries, and ids only of documents the principal may
see (the access guard's output); candidates before the guard are counted, not listed.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import threading
import time
from collections.abc import Iterator
from typing import Any

__all__ = ["VISIBLE_IDS_COMPONENT", "collect", "install", "span"]

#: The only component whose output document ids a span lists (the access guard's output is what the principal
#: may see); every other component's span records ``document_count``.
VISIBLE_IDS_COMPONENT = "AccessGuard"

_TRACE: contextvars.ContextVar[list[dict[str, Any]] | None] = contextvars.ContextVar("ragconf_trace", default=None)
_PARENT: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("ragconf_span", default=None)
_ids = itertools.count(1)
_install_lock = threading.Lock()
_installed = False


def _doc_ids(value: Any) -> list[str] | None:
    docs = value.get("documents") if isinstance(value, dict) else None
    if not isinstance(docs, list):
        return None
    return [str(getattr(d, "id", "")) for d in docs]


class _RecordedSpan:
    """Haystack ``Span`` protocol over a plain dict in the active trace."""

    def __init__(self, record: dict[str, Any], inner: Any = None) -> None:
        self.record = record
        self.inner = inner

    def set_tag(self, key: str, value: Any) -> None:
        if key == "haystack.component.visits" or not key.startswith("haystack."):
            self.record["attributes"][key.removeprefix("haystack.component.")] = value
        if self.inner is not None:
            self.inner.set_tag(key, value)

    def set_tags(self, tags: dict[str, Any]) -> None:
        for k, v in tags.items():
            self.set_tag(k, v)

    def set_content_tag(self, key: str, value: Any) -> None:
        # keep ids, never content; and ids only of documents the principal may see: components before the
        # access guard hold candidates the policy has not checked yet, so their spans count them
        if key.endswith(".output"):
            ids = _doc_ids(value)
            if ids is not None:
                if self.record["attributes"].get("type") == VISIBLE_IDS_COMPONENT:
                    self.record["attributes"]["document_ids"] = ids
                else:
                    self.record["attributes"]["document_count"] = len(ids)
            if isinstance(value, dict) and isinstance(value.get("decision_id"), str):
                self.record["attributes"]["decision_id"] = value["decision_id"]
        if self.inner is not None:
            self.inner.set_content_tag(key, value)

    def raw_span(self) -> Any:
        return self.inner.raw_span() if self.inner is not None else self

    def get_correlation_data_for_logs(self) -> dict[str, Any]:
        return self.inner.get_correlation_data_for_logs() if self.inner is not None else {}


@contextlib.contextmanager
def _open(name: str, attributes: dict[str, Any], inner: Any = None) -> Iterator[_RecordedSpan]:
    trace = _TRACE.get()
    assert trace is not None
    parent = _PARENT.get()
    record: dict[str, Any] = {
        "span_id": next(_ids),
        "parent_id": parent["span_id"] if parent else None,
        "name": name,
        "start_ns": time.time_ns(),
        "end_ns": None,
        "attributes": dict(attributes),
        "status": "ok",
    }
    trace.append(record)
    token = _PARENT.set(record)
    t0 = time.perf_counter_ns()
    try:
        yield _RecordedSpan(record, inner)
    except BaseException as exc:
        record["status"] = f"error: {type(exc).__name__}"
        raise
    finally:
        record["end_ns"] = record["start_ns"] + (time.perf_counter_ns() - t0)
        record["duration_ms"] = (record["end_ns"] - record["start_ns"]) / 1e6
        _PARENT.reset(token)


def _make_tracer(previous: Any) -> Any:
    from haystack.tracing import Tracer

    class SpanRecorder(Tracer):
        """Haystack tracer that records component spans into ragconf's active trace."""

        def __init__(self, inner: Any) -> None:
            self.inner = inner

        @contextlib.contextmanager
        def trace(
            self, operation_name: str, tags: dict[str, Any] | None = None, parent_span: Any = None
        ) -> Iterator[Any]:
            tags = tags or {}
            inner_cm = (
                self.inner.trace(operation_name, tags=tags, parent_span=parent_span)
                if self.inner is not None
                else contextlib.nullcontext(None)
            )
            with inner_cm as inner_span:
                if _TRACE.get() is None:
                    yield inner_span if inner_span is not None else _null_span()
                    return
                if operation_name == "haystack.component.run":
                    name = f"component.{tags.get('haystack.component.name', '?')}"
                    attrs = {"type": tags.get("haystack.component.type")}
                else:
                    name = operation_name.removeprefix("haystack.")
                    attrs = {}
                with _open(name, attrs, inner_span) as s:
                    yield s

        def current_span(self) -> Any:
            rec = _PARENT.get()
            if rec is not None:
                return _RecordedSpan(rec)
            return self.inner.current_span() if self.inner is not None else None

    return SpanRecorder(previous)


def _null_span() -> Any:
    from haystack.tracing.tracer import NullSpan

    return NullSpan()


def install() -> None:
    """Make Haystack report component spans to ragconf (idempotent; keeps any tracer enabled before)."""
    global _installed
    with _install_lock:
        if _installed:
            return
        from haystack import tracing

        current = tracing.tracer.actual_tracer
        previous = None if not tracing.is_tracing_enabled() else current
        tracing.enable_tracing(_make_tracer(previous))
        _installed = True


@contextlib.contextmanager
def collect(name: str, **attributes: Any) -> Iterator[list[dict[str, Any]]]:
    """Record every span opened inside the block (this thread/context) under a root span ``name``.
    Yields the list of span records, complete when the block exits."""
    install()
    trace: list[dict[str, Any]] = []
    token = _TRACE.set(trace)
    parent_token = _PARENT.set(None)
    try:
        with _open(name, attributes):
            yield trace
    finally:
        _PARENT.reset(parent_token)
        _TRACE.reset(token)


@contextlib.contextmanager
def span(name: str, **attributes: Any) -> Iterator[Any]:
    """A ragconf step as a child span of the current one (no-op outside :func:`collect`)."""
    if _TRACE.get() is None:
        yield _null_span()
        return
    with _open(name, attributes) as s:
        yield s
