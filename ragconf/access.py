"""The access schema: one strict definition of the access fields a document may carry.

Every access value that reaches the index passes through :func:`validate_access`. Anything that is not exactly
the documented type is rejected with a message naming the field and what would be valid; nothing is
flattened, stringified, defaulted or dropped here (``docs/ingest.md``):

- ``acl_groups``: a list of non-empty strings. A comma-separated string is split (``"hr, sre"``). An empty list
  ``[]`` is kept and admits nobody. A blank string, a mapping, a number, a boolean, ``null`` or a nested list is
  rejected.
- ``tenant``: a non-empty string.
- ``classification``: one of :data:`ragconf.types.CLASSIFICATIONS` exactly (lower case), or a value the corpus
  maps in ``access.classification_map``. Case variants that are not mapped are rejected.
- declared attributes (``access.attributes``): a non-empty string or a list of non-empty strings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ragconf.types import CLASSIFICATIONS

__all__ = ["ACCESS_FIELDS", "AccessValueError", "describe", "validate_access", "validate_field"]

#: The access fields every store and policy knows.
ACCESS_FIELDS: tuple[str, ...] = ("acl_groups", "tenant", "classification")


class AccessValueError(ValueError):
    """An access value of the wrong type or outside the valid set."""

    def __init__(self, field: str, value: Any, expected: str) -> None:
        self.field = field
        self.value = value
        self.expected = expected
        super().__init__(f"access field '{field}' is {describe(value)}; expected {expected}")


def describe(value: Any) -> str:
    """A short, safe description of a value for an error message (type and a clipped repr)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"the string {shown!r}" if value.strip() else "a blank string"
    if isinstance(value, Mapping):
        return f"a mapping with keys {sorted(map(str, value))[:5]}"
    if isinstance(value, list | tuple):
        return f"a list {_clip(value)}"
    return f"a {type(value).__name__}"


def _clip(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _string(value: Any) -> str | None:
    """A non-empty, stripped string, or None when ``value`` is anything else."""
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _groups(value: Any) -> list[str]:
    expected = "a list of non-empty strings such as [hr, sre] (or 'hr, sre'); [] admits nobody"
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
        if not value.strip() or not all(parts):
            raise AccessValueError("acl_groups", value, expected)
        return sorted(set(parts))
    if not isinstance(value, list | tuple):
        raise AccessValueError("acl_groups", value, expected)
    out = []
    for item in value:
        s = _string(item)
        if s is None:
            raise AccessValueError("acl_groups", value, f"{expected}; the item {describe(item)} is not")
        out.append(s)
    return sorted(set(out))


def _tenant(value: Any) -> str:
    s = _string(value)
    if s is None:
        raise AccessValueError("tenant", value, "a non-empty string such as 'acme' (quote numbers: '42')")
    return s


def _classification(value: Any, mapping: Mapping[str, str] | None) -> str:
    valid = ", ".join(CLASSIFICATIONS)
    if isinstance(value, str):
        if value in CLASSIFICATIONS:
            return value
        if mapping and value in mapping:
            return str(mapping[value])
        if mapping and value.strip() in mapping:
            return str(mapping[value.strip()])
        hint = f"one of {valid}"
        if value.strip().lower() in CLASSIFICATIONS:
            hint += f" (write '{value.strip().lower()}', or map '{value}' in corpus.access.classification_map)"
        elif mapping:
            hint += f", or a mapped value ({', '.join(sorted(mapping))})"
        raise AccessValueError("classification", value, hint)
    raise AccessValueError("classification", value, f"one of {valid}")


def _attribute(name: str, value: Any) -> str | list[str]:
    expected = "a non-empty string or a list of non-empty strings"
    if isinstance(value, list | tuple):
        items = [_string(v) for v in value]
        if any(i is None for i in items):
            raise AccessValueError(name, value, expected)
        return sorted({i for i in items if i is not None})
    s = _string(value)
    if s is None:
        raise AccessValueError(name, value, expected)
    return s


def validate_field(name: str, value: Any, *, classification_map: Mapping[str, str] | None = None) -> str | list[str]:
    """The canonical value of one access field, or :class:`AccessValueError`."""
    if name == "acl_groups":
        return _groups(value)
    if name == "tenant":
        return _tenant(value)
    if name == "classification":
        return _classification(value, classification_map)
    return _attribute(name, value)


def validate_access(
    values: Mapping[str, Any], *, classification_map: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Canonical access fields for ``values`` (field -> raw value); raises on the first invalid one."""
    return {k: validate_field(k, v, classification_map=classification_map) for k, v in values.items()}
