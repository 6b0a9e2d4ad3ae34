"""Leakage against the evaluation set's own ground truth (examples/handbook/eval/forbidden.jsonl), independent of
the policy: the shipped policy scores 0, a deliberately loosened copy of the bundle fails the `leakage == 0` gate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.conftest import ROOT, run_cli


def _loosened_bundle(tmp_path: Path) -> Path:
    """A copy of the bundle whose allow rule and retrieval filter both ignore the tenant (a wrong policy that is
    still self-consistent, so a re-check of the same rule cannot notice)."""
    bundle = tmp_path / "loose"
    shutil.copytree(ROOT / "policies", bundle)
    rego = bundle / "ragconf" / "access" / "access.rego"
    text = rego.read_text(encoding="utf-8")
    allow = "tenant_ok(meta) if meta.tenant == principal_tenant"
    filt = '{"field": "meta.tenant", "operator": "in", "value": [null, principal_tenant]}'
    assert allow in text and filt in text
    text = text.replace(allow, "tenant_ok(meta) if meta.tenant")
    text = text.replace(filt, '{"field": "meta.tenant", "operator": "in", "value": [null, "acme", "globex"]}')
    rego.write_text(text, encoding="utf-8")
    for test in bundle.rglob("*_test.rego"):
        test.unlink()
    return bundle


def test_ground_truth_leakage_fails_a_wrong_policy(handbook_dir: Path, tmp_path: Path) -> None:
    args = ["eval", "eval=handbook", "eval.personas=[alice,gina]", "--json"]
    good = run_cli(*args, cwd=handbook_dir)
    assert good.returncode == 0, good.stdout + good.stderr
    out = json.loads(good.stdout)
    assert out["metrics"]["leakage"] == 0 and out["metrics"]["leakage_ground_truth"] == 1

    bad = run_cli(*args, f"policy.bundle={_loosened_bundle(tmp_path)}", cwd=handbook_dir)
    assert bad.returncode == 4, bad.stdout + bad.stderr
    out = json.loads(bad.stdout)
    assert out["per_persona"]["gina"]["leakage"] > 0  # gina (globex) now gets acme documents
    assert out["metrics"]["leakage_policy_recheck"] == 0  # the old check re-ran the same wrong rule: blind
    gate = next(g for g in out["gates"] if g["gate"].startswith("leakage"))
    assert not gate["passed"]
