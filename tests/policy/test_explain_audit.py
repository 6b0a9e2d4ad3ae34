"""`ragconf policy explain` and `ragconf audit` through the real CLI; the audit log's chunk ids, run ids,
rotation and permissions."""

from __future__ import annotations

import json
import shutil
import stat
import threading
from pathlib import Path

from ragconf.policy.audit import AuditLog, audit_files, query_audit, read_audit, run_context
from tests.conftest import run_cli

BUNDLE = Path(__file__).resolve().parents[2] / "policies"
RUNBOOK = "engineering/database-failover.md"


def _json(proc) -> dict:  # type: ignore[no-untyped-def]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def test_explain_names_the_conditions_and_the_decisions_are_audited(handbook_dir: Path) -> None:
    carol = _json(run_cli("policy", "explain", "--user", "carol", "--doc", RUNBOOK, "--json", cwd=handbook_dir))
    assert carol["visible"] is False and carol["consistent"] is True
    assert carol["denied_by"] == ["clearance", "groups"]  # contractor, public clearance vs confidential + sre
    assert carol["chunks"] and all(not c["filter_matches"] and not c["allowed"] for c in carol["chunks"])
    failed = carol["chunks"][0]["failed_filter_conditions"]
    assert any(c.get("field") == "meta.classification" for c in failed)
    ids = carol["decision_ids"]
    assert ids["access.filter"] and ids["access.documents"]

    alice = _json(run_cli("policy", "explain", "-u", "alice", "-d", RUNBOOK, "--json", cwd=handbook_dir))
    assert alice["visible"] is True and alice["denied_by"] == []
    assert all(c["filter_matches"] and c["allowed"] for c in alice["chunks"])

    # the per-document decision is in the audit log with the denied chunk ids, findable by decision and by doc
    rows = _json(run_cli("audit", "--decision", ids["access.documents"][:8], "--json", cwd=handbook_dir))
    assert len(rows) == 1 and rows[0]["principal"] == "carol"
    assert rows[0]["allowed_ids"] == [] and sorted(rows[0]["denied_ids"]) == sorted(
        c["chunk_id"] for c in carol["chunks"]
    )
    by_doc = _json(run_cli("audit", "--doc", RUNBOOK, "--user", "carol", "--json", cwd=handbook_dir))
    assert ids["access.documents"] in {r["decision_id"] for r in by_doc}
    text = run_cli("policy", "explain", "--user", "carol", "--doc", RUNBOOK, cwd=handbook_dir)
    assert text.returncode == 0 and "NOT VISIBLE" in text.stdout and "denied by: clearance, groups" in text.stdout


def test_ask_decisions_record_allowed_chunk_ids(handbook_dir: Path) -> None:
    out = _json(
        run_cli("ask", "When should we fail over the primary database?", "--user", "alice", "--json", cwd=handbook_dir)
    )
    did = out["decision_ids"]["access.documents"]
    rec = _json(run_cli("audit", "--decision", did, "--json", cwd=handbook_dir))[0]
    returned = {d["chunk_id"] for d in out["documents"]}
    assert returned <= set(rec["allowed_ids"]) and rec["allowed"] == len(rec["allowed_ids"])


def test_custom_rule_denial_and_unknown_document(handbook_dir: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "custom"
    shutil.copytree(BUNDLE, bundle)
    rego = bundle / "ragconf" / "access" / "access.rego"
    old = "visible(meta) if {\n\tvalid_principal\n"
    assert old in rego.read_text()
    rego.write_text(
        rego.read_text().replace(old, 'visible(meta) if {\n\tinput.principal.id != "alice"\n\tvalid_principal\n')
    )
    out = _json(
        run_cli(
            "policy", "explain", "-u", "alice", "-d", RUNBOOK, "--json", f"policy.bundle={bundle}", cwd=handbook_dir
        )
    )
    assert out["visible"] is False and out["denied_by"] == ["custom rule"]
    assert out["consistent"] is False  # filter still matches: `policy test` would flag this bundle
    proc = run_cli("policy", "explain", "-u", "alice", "-d", "engineering/database-failovr.md", cwd=handbook_dir)
    assert proc.returncode == 2 and f"did you mean '{RUNBOOK}'" in proc.stderr and "Traceback" not in proc.stderr


def test_audit_rotates_keeps_n_files_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "new" / "logs" / "audit.jsonl"
    log = AuditLog(path, max_bytes=600, keep=3)
    threads = [
        threading.Thread(
            target=lambda t=t: [log.write({"decision_id": f"{t}-{i}", "principal": f"u{t}"}) for i in range(40)]
        )
        for t in range(4)
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    log.close()
    files = audit_files(path)
    assert [f.name for f in files] == ["audit.jsonl.3", "audit.jsonl.2", "audit.jsonl.1", "audit.jsonl"]
    assert all(f.stat().st_size <= 600 for f in files)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    assert (
        stat.S_IMODE(path.parent.stat().st_mode) == 0o700 and stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o700
    )
    records = list(read_audit(path))
    ids = [r["decision_id"] for r in records]
    assert len(ids) == len(set(ids)) and 0 < len(ids) < 160  # the oldest rotated away, none duplicated or torn
    for t in range(4):  # each writer's records stay in order across the files
        mine = [int(i.split("-")[1]) for i in ids if i.startswith(f"{t}-")]
        assert mine == sorted(mine)
    # the CLI reads the rotated files too
    rows = _json(run_cli("audit", "--user", "u1", "--limit", "0", "--json", f"policy.audit.path={path}", cwd=tmp_path))
    assert [r["decision_id"] for r in rows] == [i for i in ids if i.startswith("1-")]
    oldest = {json.loads(x)["decision_id"] for x in files[0].read_text().splitlines()}
    assert oldest <= set(ids)  # records of the oldest rotated file are part of what is queried


def test_run_id_is_recorded_from_the_context(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    log.write({"decision_id": "a", "principal": "x"})
    with run_context("run-123"):
        log.write({"decision_id": "b", "principal": "x"})
    log.write({"decision_id": "c", "principal": "x"})
    log.close()
    assert [r["decision_id"] for r in query_audit(path, run="run-123")] == ["b"]
    assert "run_id" not in next(iter(read_audit(path)))
    rows = _json(run_cli("audit", "--run", "run-123", "--json", f"policy.audit.path={path}", cwd=tmp_path))
    assert [r["decision_id"] for r in rows] == ["b"]
