"""The OPA server engine, against a real `opa run --server policies/` when RAGCONF_TEST_OPA_URL is set."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ragconf.errors import PolicyError
from ragconf.policy import OpaServerEngine, load_engine, run_policy_tests

OPA_URL = os.environ.get("RAGCONF_TEST_OPA_URL")
BUNDLE = Path(__file__).resolve().parents[2] / "policies"


def test_unreachable_server_fails_closed() -> None:
    engine = OpaServerEngine("http://127.0.0.1:9", timeout=0.5)
    with pytest.raises(PolicyError, match="OPA server"):
        engine.evaluate("ragconf/access/filter", {"principal": {"id": "x"}})


@pytest.mark.opa_server
@pytest.mark.skipif(not OPA_URL, reason="set RAGCONF_TEST_OPA_URL (opa run --server policies/)")
def test_server_runs_the_same_cases() -> None:
    engine = load_engine({"engine": "opa", "url": OPA_URL, "bundle": str(BUNDLE)})
    report = run_policy_tests(BUNDLE, engine)
    assert report.failed == 0 and report.passed >= 30
