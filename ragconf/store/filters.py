"""Haystack filters -> SQLite WHERE clauses over the chunk's JSON metadata.

Semantics (shared by every store): a missing field equals None; ``== None`` matches missing; on list-valued
fields ``==``/``in`` match when any element matches and ``!=``/``not in`` when none does; comparisons with a
missing field are false. Anything malformed raises StoreError, never "no filter".
"""

from __future__ import annotations

import json
from typing import Any

from ragconf.errors import StoreError

__all__ = ["OPERATORS", "combine", "to_sql"]

_COMPARE = {">": ">", ">=": ">=", "<": "<", "<=": "<="}
_LOGIC = ("AND", "OR", "NOT")


def combine(*filters: dict[str, Any] | None) -> dict[str, Any] | None:
    """AND of the given filters (None ones skipped)."""
    present = [f for f in filters if f]
    if not present:
        return None
    if len(present) == 1:
        return present[0]
    return {"operator": "AND", "conditions": present}


def _path(field: str) -> tuple[str, str | None]:
    """(kind, json path): kind 'meta', 'id' or 'content'."""
    if field == "id":
        return "id", None
    if field == "content":
        return "content", None
    name = field[5:] if field.startswith("meta.") else field
    if not name:
        raise StoreError(f"invalid filter field '{field}'")
    return "meta", "$." + ".".join('"' + p.replace('"', '\\"') + '"' for p in name.split("."))


_INT64 = (-(2**63), 2**63 - 1)
OPERATORS = ("==", "!=", ">", ">=", "<", "<=", "in", "not in", "AND", "OR", "NOT")


def _scalar(value: Any, field: str) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) and not _INT64[0] <= value <= _INT64[1]:
        try:  # SQLite integers are 64-bit: compare as a float instead
            return float(value)
        except OverflowError:
            raise StoreError(f"filter on '{field}': number {str(value)[:20]}... is out of range") from None
    if value is None or isinstance(value, str | int | float):
        return value
    raise StoreError(f"filter on '{field}': unsupported value {value!r} (use str, number, bool or null)")


def _any_equal(kind: str, path: str | None, values: list[Any], params: list[Any]) -> str:
    non_null = [v for v in values if v is not None]
    parts = []
    if non_null:
        marks = ",".join("?" * len(non_null))
        if kind == "meta":
            parts.append(f"EXISTS (SELECT 1 FROM json_each(c.meta, ?) je WHERE je.value IN ({marks}))")
            params.append(path)
        else:
            parts.append(f"c.{kind} IN ({marks})")
        params.extend(int(v) if isinstance(v, bool) else v for v in non_null)
    if any(v is None for v in values):
        if kind == "meta":
            parts.append("json_type(c.meta, ?) IS NULL OR json_type(c.meta, ?) = 'null'")
            params.extend([path, path])
        else:
            parts.append(f"c.{kind} IS NULL")
    return "(" + " OR ".join(f"({p})" for p in parts) + ")" if parts else "0"


def to_sql(flt: dict[str, Any], params: list[Any]) -> str:
    """A WHERE fragment over table alias ``c`` for ``flt``; appends bound parameters to ``params``."""
    if not isinstance(flt, dict):
        raise StoreError(f"a filter must be a mapping, got {type(flt).__name__}")
    op = flt.get("operator")
    if not isinstance(op, str | None):
        raise StoreError(f"filter operator must be a string, got {op!r}; this store supports {', '.join(OPERATORS)}")
    if "operator" not in flt and "field" not in flt:
        raise StoreError(
            f"not a filter: {json.dumps(flt, default=str)[:200]}",
            hint='filters look like {"field": "meta.x", "operator": "==", "value": 1} or '
            '{"operator": "AND", "conditions": [...]} (the legacy {"meta.x": {"$eq": 1}} form is not supported)',
        )
    if op in _LOGIC:
        conds = flt.get("conditions")
        if not isinstance(conds, list) or not conds:
            raise StoreError(f"filter operator {op} needs a non-empty 'conditions' list")
        inner = [to_sql(c, params) for c in conds]
        if op == "NOT":
            return "(NOT (" + " AND ".join(inner) + "))"
        return "(" + f" {op} ".join(inner) + ")"
    field = flt.get("field")
    if not isinstance(field, str):
        raise StoreError(f"filter condition needs a 'field' string: {json.dumps(flt, default=str)}")
    if "value" not in flt:
        raise StoreError(f"filter condition on '{field}' needs a 'value'")
    kind, path = _path(field)
    value = flt["value"]
    if op in ("==", "!="):
        clause = _any_equal(kind, path, [_scalar(value, field)], params)
        return clause if op == "==" else f"(NOT {clause})"
    if op in ("in", "not in"):
        if not isinstance(value, list | tuple):
            raise StoreError(f"filter '{op}' on '{field}' needs a list value, got {value!r}")
        clause = _any_equal(kind, path, [_scalar(v, field) for v in value], params)
        return clause if op == "in" else f"(NOT {clause})"
    if op in _COMPARE:
        v = _scalar(value, field)
        if v is None:
            raise StoreError(f"filter '{op}' on '{field}' cannot compare with null")
        if kind == "meta":
            params.extend([path, path, v])
            return f"(json_extract(c.meta, ?) IS NOT NULL AND json_extract(c.meta, ?) {_COMPARE[op]} ?)"
        params.append(v)
        return f"(c.{kind} {_COMPARE[op]} ?)"
    raise StoreError(
        f"filter on '{field}': unsupported operator {op!r}; this store supports {', '.join(OPERATORS)}"
        if op is not None
        else f"filter condition on '{field}' has no 'operator'; this store supports {', '.join(OPERATORS)}"
    )
