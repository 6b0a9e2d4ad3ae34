"""A pure-Python evaluator of Haystack filters with ragconf's semantics (see ragconf.store.filters):
used to re-check documents independently of the store (defence in depth, leakage metrics, tests)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ragconf.errors import StoreError

__all__ = ["matches"]

_MISSING = object()


def _get(doc: Mapping[str, Any], field: str) -> Any:
    if field in ("id", "content"):
        return doc.get(field, None)
    name = field[5:] if field.startswith("meta.") else field
    meta = doc.get("meta", doc)
    cur: Any = meta
    for part in name.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _values(v: Any) -> list[Any]:
    return list(v) if isinstance(v, list | tuple) else [v]


def _eq_any(actual: Any, wanted: list[Any]) -> bool:
    if actual is None:
        return any(w is None for w in wanted)
    vals = _values(actual)
    return any(a == w and w is not None for a in vals for w in wanted)


def matches(flt: Mapping[str, Any] | None, doc: Mapping[str, Any]) -> bool:
    """Whether ``doc`` ({"id", "content", "meta": {...}}) passes ``flt`` (None passes everything)."""
    if not flt:
        return True
    op = flt.get("operator")
    if op in ("AND", "OR", "NOT"):
        conds = flt.get("conditions")
        if not isinstance(conds, list) or not conds:
            raise StoreError(f"filter operator {op} needs a non-empty 'conditions' list")
        results = [matches(c, doc) for c in conds]
        if op == "AND":
            return all(results)
        if op == "OR":
            return any(results)
        return not all(results)
    field = flt.get("field")
    if not isinstance(field, str) or "value" not in flt:
        raise StoreError(f"invalid filter condition: {flt!r}")
    actual, value = _get(doc, field), flt["value"]
    if op == "==":
        return _eq_any(actual, [value])
    if op == "!=":
        return not _eq_any(actual, [value])
    if op in ("in", "not in"):
        if not isinstance(value, list | tuple):
            raise StoreError(f"filter '{op}' on '{field}' needs a list value")
        hit = _eq_any(actual, list(value))
        return hit if op == "in" else not hit
    if op in (">", ">=", "<", "<="):
        if actual is None or isinstance(actual, list):
            return False
        try:
            return {">": actual > value, ">=": actual >= value, "<": actual < value, "<=": actual <= value}[op]
        except TypeError:
            return False
    raise StoreError(f"unknown filter operator {op!r}")
