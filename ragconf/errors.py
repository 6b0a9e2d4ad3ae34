"""Error hierarchy: one base, a shallow tree.

Every error a user can cause is a :class:`RagconfError`; the CLI prints its
message (no traceback) and exits with :attr:`RagconfError.exit_code`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "RagconfError",
    "SpecError",
    "RegistryError",
    "CompileError",
    "IngestError",
    "StoreError",
    "PolicyError",
    "AccessDenied",
    "TrackingError",
    "EvalError",
    "GateFailed",
    "closest",
]


def closest(word: str, options: Iterable[str]) -> str | None:
    """The closest valid option to ``word`` (difflib ratio >= 0.6), if any."""
    matches = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return matches[0] if matches else None


class RagconfError(Exception):
    """Base of every ragconf error. ``exit_code`` is what the CLI exits with."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(self.__str__())

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


class SpecError(RagconfError):
    """A configuration mistake: names the dotted key, the source file and valid options."""

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        key: str | None = None,
        source: str | None = None,
        valid: Iterable[str] | None = None,
        got: object | None = None,
        hint: str | None = None,
    ) -> None:
        self.key = key
        self.source = source
        self.valid = sorted({str(v) for v in valid}) if valid is not None else None
        self.got = got
        parts = []
        if key:
            parts.append(f"config key '{key}'")
        if source:
            parts.append(f"(from {source})")
        prefix = " ".join(parts)
        full = f"{prefix}: {message}" if prefix else message
        if self.valid is not None:
            match = closest(str(got), self.valid) if got is not None else None
            if match:
                full += f"; did you mean '{match}'?"
            shown = ", ".join(self.valid[:25]) + (" ..." if len(self.valid) > 25 else "")
            full += f"\n  valid options: {shown}"
        super().__init__(full, hint=hint)


class RegistryError(SpecError):
    """An unknown component alias, or a plugin that failed to load."""


class CompileError(SpecError):
    """A pipeline spec that cannot be built: bad parameter, bad connection."""


class IngestError(RagconfError):
    """A source that cannot be read or parsed."""

    exit_code = 2


class StoreError(RagconfError):
    """The document store failed or is unusable."""


class PolicyError(RagconfError):
    """A policy failed to load or evaluate. Callers treat it as deny."""

    exit_code = 3


class PolicyConfigError(PolicyError):
    """A policy bundle that cannot be used: missing, not UTF-8, does not parse or compile, calls a forbidden
    built-in. A configuration mistake (exit 2); requests still fail closed."""

    exit_code = 2


class AccessDenied(PolicyError):
    """A request refused by policy, with the reason the policy gave."""


class TrackingError(RagconfError):
    """Run tracking failed (callers warn, never lose the user's result)."""


class EvalError(RagconfError):
    """An evaluation dataset or metric problem."""

    exit_code = 2


class GateFailed(RagconfError):
    """One or more quality gates failed."""

    exit_code = 4
