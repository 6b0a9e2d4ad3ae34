"""Quality gates: `metric op number` expressions checked against a run's metrics."""

from __future__ import annotations

import operator
import re
from collections.abc import Mapping
from dataclasses import dataclass

from ragconf.errors import SpecError

__all__ = ["Gate", "GateResult", "check_gates", "parse_gates"]

_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq, "!=": operator.ne}
_GATE = re.compile(r"^\s*([A-Za-z_][\w@.\-\[\]]*)\s*(>=|<=|==|!=|>|<)\s*(-?\d+(?:\.\d+)?(?:[eE]-?\d+)?)\s*$")


@dataclass(frozen=True)
class Gate:
    metric: str
    op: str
    threshold: float
    index: int = 0

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.threshold:g}"


@dataclass(frozen=True)
class GateResult:
    gate: Gate
    value: float
    passed: bool
    #: value - threshold, oriented so that a negative margin means failing by that much
    margin: float


def parse_gates(exprs: list[str]) -> list[Gate]:
    gates = []
    for i, expr in enumerate(exprs):
        m = _GATE.match(str(expr))
        if not m:
            raise SpecError(
                f"cannot parse gate {expr!r}",
                key=f"eval.gates[{i}]",
                hint="write 'metric op number', e.g. 'ndcg@10 >= 0.66' (ops: >= <= > < == !=)",
            )
        gates.append(Gate(m.group(1), m.group(2), float(m.group(3)), i))
    return gates


def check_gates(gates: list[Gate], metrics: Mapping[str, float]) -> list[GateResult]:
    out = []
    for g in gates:
        if g.metric not in metrics:
            raise SpecError(
                f"gate names unknown metric '{g.metric}'", key=f"eval.gates[{g.index}]", valid=metrics, got=g.metric
            )
        value = float(metrics[g.metric])
        passed = bool(_OPS[g.op](value, g.threshold))
        diff = value - g.threshold
        if g.op in ("<=", "<"):
            margin = -diff
        elif g.op == "==":
            margin = -abs(diff)
        elif g.op == "!=":
            margin = abs(diff)
        else:
            margin = diff
        out.append(GateResult(g, value, passed, margin))
    return out
