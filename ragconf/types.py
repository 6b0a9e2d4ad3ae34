"""Small shared value types, importable from every room."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["CLASSIFICATIONS", "Principal"]

#: Ordered classification levels, lowest first.
CLASSIFICATIONS: tuple[str, ...] = ("public", "internal", "confidential", "restricted")


@dataclass(frozen=True)
class Principal:
    """Who is asking: resolved from the identity config, carried through the pipeline."""

    id: str
    groups: tuple[str, ...] = ()
    tenant: str | None = None
    clearance: str = "public"
    attributes: dict[str, Any] = field(default_factory=dict)

    def to_input(self) -> dict[str, Any]:
        """The JSON object policies see as ``input.principal``."""
        return {
            "id": self.id,
            "groups": list(self.groups),
            "tenant": self.tenant,
            "clearance": self.clearance,
            "attributes": dict(self.attributes),
        }
