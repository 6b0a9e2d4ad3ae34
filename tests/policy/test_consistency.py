"""One definition of visibility: `policy test` and `validate` catch a filter and an allow that disagree, with a
counterexample, on principals x documents built from the store's access values and edge cases."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from ragconf.policy import RegoEngine
from ragconf.policy.consistency import check_visibility, generate_documents
from tests.conftest import run_cli

BUNDLE = Path(__file__).resolve().parents[2] / "policies"
ALLOW = "allow if visible(input.document.meta)\n"


def _edited(tmp_path: Path, old: str, new: str) -> Path:
    bundle = tmp_path / "edited"
    shutil.copytree(BUNDLE, bundle)
    rego = bundle / "ragconf" / "access" / "access.rego"
    text = rego.read_text()
    assert old in text
    rego.write_text(text.replace(old, new))
    return bundle


def test_shipped_policy_agrees_on_the_store_values(handbook_dir: Path) -> None:
    proc = run_cli("policy", "test", cwd=handbook_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("visibility"))
    assert "filter, allow and allowed_ids agree on" in line
    signatures = int(re.search(r"(\d+) access signatures from the store", line).group(1))  # type: ignore[union-attr]
    assert signatures >= 5  # the handbook's distinct (tenant, classification, acl_groups)
    proc = run_cli("validate", "--json", cwd=handbook_dir)
    assert proc.returncode == 0, proc.stderr
    vis = json.loads(proc.stdout)["visibility"]
    assert vis["ok"] and vis["mismatches"] == 0 and vis["cases"] >= 5000 and vis["store_signatures"] == signatures


def test_allow_edited_but_not_filter_fails_with_a_counterexample(tmp_path: Path) -> None:
    # governance lets every public document through `allow`, whatever its tenant, and forgets the filter
    bundle = _edited(tmp_path, ALLOW, ALLOW + '\nallow if input.document.meta.classification == "public"\n')
    proc = run_cli("policy", "test", f"policy.bundle={bundle}", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "visibility MISMATCH: filter and allow disagree on" in proc.stdout
    assert "counterexample 1:" in proc.stdout and "document meta" in proc.stdout
    assert "says not visible, allow says visible" in proc.stdout
    proc = run_cli("validate", f"policy.bundle={bundle}", cwd=tmp_path)
    assert proc.returncode == 2 and "filter and allow disagree" in proc.stderr
    assert "counterexample 1:" in proc.stdout and "Traceback" not in proc.stderr


def test_filter_edited_but_not_allow_is_caught_too(tmp_path: Path) -> None:
    bundle = _edited(
        tmp_path,
        '{"field": "meta.acl_groups", "operator": "==", "value": null},',
        '{"field": "meta.acl_groups", "operator": "==", "value": null},\n\t\t'
        '{"field": "meta.acl_groups", "operator": "==", "value": "group-not-in-store"},',
    )
    engine = RegoEngine(bundle)
    report = check_visibility(engine, signatures=[{"tenant": "acme", "acl_groups": ["hr"]}])
    assert not report.ok
    bad = report.counterexamples[0]
    assert bad.filter_says and not bad.allow_says and "group-not-in-store" in json.dumps(bad.meta)


def test_edge_cases_are_generated() -> None:
    docs = generate_documents([{"tenant": "acme", "classification": "internal", "acl_groups": ["hr"]}], ("public",))
    assert {} in docs  # no access fields at all
    assert {"acl_groups": []} in docs  # an empty list admits nobody
    assert {"tenant": None, "classification": None, "acl_groups": None} in docs
    assert any(d.get("classification") == "level-not-configured" for d in docs)
    assert any(d.get("acl_groups") == "hr" for d in docs)  # a bare string
    assert docs[0] == {"tenant": "acme", "classification": "internal", "acl_groups": ["hr"]}  # store values first


def test_a_rule_on_a_declared_attribute_in_allow_only_is_caught(tmp_path: Path) -> None:
    """corpus.access.attributes are varied on both sides: an allow rule on `region` that the filter does not
    have is invisible to principals without attributes, and caught once the attribute is declared."""
    bundle = _edited(
        tmp_path,
        ALLOW,
        ALLOW + "\nallow if input.document.meta.region == input.principal.attributes.region\n",
    )
    engine = RegoEngine(bundle)
    store = [{"tenant": "acme", "acl_groups": ["hr"], "classification": "internal", "region": "eu"}]
    assert check_visibility(engine, signatures=store).ok  # the attribute never varies: the gap stays hidden
    report = check_visibility(engine, signatures=store, attributes=["region"])
    assert not report.ok
    bad = report.counterexamples[0]
    assert bad.allow_says and not bad.filter_says
    assert bad.principal["attributes"]["region"] == bad.meta["region"]
