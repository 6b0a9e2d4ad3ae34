"""`ragconf policy test`: run the table-driven cases of every *_test.rego through the configured engine.

A test file ``ragconf/x/x_test.rego`` (package ``ragconf.x_test``) defines ``cases``: a list of
``{"name", "rule", "input", "expect"}``; each case evaluates ``data.ragconf.x.<rule>`` with ``input`` and
compares it with ``expect`` (``false`` also matches undefined; sets compare as sorted lists). The same
files hold a ``test_cases`` rule so `opa test policies/` runs them too.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragconf.errors import PolicyError

__all__ = ["CaseResult", "PolicyTestReport", "run_policy_tests"]

_PACKAGE = re.compile(r"^package\s+([\w.]+)", re.MULTILINE)


@dataclass
class CaseResult:
    name: str
    passed: bool
    error: str = ""


@dataclass
class PolicyTestReport:
    results: list[CaseResult] = field(default_factory=list)

    @property
    def passed(self) -> int:
        return sum(1 for r in self.results if r.passed)

    @property
    def failed(self) -> int:
        return sum(1 for r in self.results if not r.passed)


def _norm(value: Any) -> Any:
    if isinstance(value, list):
        items = [_norm(v) for v in value]
        return items
    if isinstance(value, dict):
        return {k: _norm(v) for k, v in value.items()}
    return value


def _equal(actual: Any, expect: Any) -> bool:
    if expect is False:
        return actual is None or actual is False
    if actual == expect:
        return True
    if isinstance(actual, list) and isinstance(expect, list):  # sets come back as arrays
        key = lambda v: json.dumps(v, sort_keys=True)  # noqa: E731
        return sorted(actual, key=key) == sorted(expect, key=key)
    return False


def run_policy_tests(bundle: Path, engine: Any) -> PolicyTestReport:
    """Evaluate every case of every *_test.rego under ``bundle`` with ``engine``."""
    report = PolicyTestReport()
    files = sorted(bundle.rglob("*_test.rego"))
    for path in files:
        m = _PACKAGE.search(path.read_text(encoding="utf-8"))
        if not m or not m.group(1).endswith("_test"):
            report.results.append(CaseResult(str(path), False, "test package must be named <package>_test"))
            continue
        test_pkg = m.group(1)
        target = test_pkg[: -len("_test")].replace(".", "/")
        try:
            cases = engine.evaluate(test_pkg.replace(".", "/") + "/cases", {})
        except PolicyError as exc:
            report.results.append(CaseResult(f"{path}", False, str(exc)))
            continue
        if not isinstance(cases, list) or not cases:
            report.results.append(CaseResult(str(path), False, "no `cases` list found"))
            continue
        for i, case in enumerate(cases):
            name = f"{test_pkg}: {case.get('name') or f'case {i}'}"
            try:
                actual = engine.evaluate(f"{target}/{case['rule']}", case.get("input") or {})
            except (PolicyError, KeyError) as exc:
                report.results.append(CaseResult(name, False, str(exc)))
                continue
            ok = _equal(actual, case.get("expect"))
            report.results.append(
                CaseResult(
                    name, ok, "" if ok else f"expected {json.dumps(case.get('expect'))}, got {json.dumps(actual)}"
                )
            )
    return report
