"""The handbook example, end to end through the real CLI: ingest, ask as each persona, JSON output, export,
validate, incremental re-ingest and the evaluation gates."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_cli

CANARIES = {"KESTREL-4412": "sre", "ZEBRA-7731": "hr", "OSPREY-9058": "hr-investigations", "HERON-2290": "globex"}


def ask(work: Path, question: str, user: str, *extra: str) -> dict:
    proc = run_cli("ask", question, "--user", user, "--json", *extra, cwd=work)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def run_artifact(work: Path, run_id: str, name: str, monkeypatch) -> dict:  # type: ignore[no-untyped-def]
    """A JSON artifact of a tracked run in ``work``'s local MLflow store."""
    from ragconf.runtime import RagApp
    from ragconf.tracking import load_run_artifact

    monkeypatch.chdir(work)
    rag = RagApp.from_overrides()
    try:
        cfg = {**rag.spec.tracking.model_dump(), "workdir": str(rag.workdir)}
        return json.loads(load_run_artifact(cfg, run_id, name) or "{}")
    finally:
        rag.close()


def test_ingest_is_idempotent(handbook_dir: Path) -> None:
    proc = run_cli("ingest", "--json", cwd=handbook_dir, check=True)
    data = json.loads(proc.stdout)
    assert data["added"] == 0 and data["updated"] == 0 and data["deleted"] == 0
    docs = [
        p
        for p in (Path(__file__).parents[2] / "examples/handbook/docs").rglob("*")
        if p.is_file() and not p.name.endswith(".meta.yaml")
    ]
    assert data["unchanged"] == len(docs) == 12


def test_sre_gets_cited_answer_from_the_runbook(handbook_dir: Path) -> None:
    out = ask(handbook_dir, "When should we fail over the primary database?", "alice")
    assert out["citations"], out
    cited = {c["doc_id"] for c in out["citations"]}
    assert "engineering/database-failover.md" in cited
    assert "replication lag" in out["answer"]
    for c in out["citations"]:
        assert f"[{c['n']}]" in out["answer"]
        assert c["chunk_id"] and c["source"]
    assert set(out["documents"][0]) >= {"doc_id", "chunk_id", "score", "meta"}
    assert out["decision_ids"]["access.filter"]


def test_contractor_never_sees_confidential_runbook(handbook_dir: Path) -> None:
    out = ask(handbook_dir, "When should we fail over the primary database? failover token", "carol")
    docs = {d["doc_id"] for d in out["documents"]}
    assert "engineering/database-failover.md" not in docs
    assert "KESTREL-4412" not in json.dumps(out)
    for d in out["documents"]:
        assert d["meta"].get("classification", "public") == "public"


def test_canary_tokens_only_reach_authorised_users(handbook_dir: Path) -> None:
    questions = {
        "KESTREL-4412": "What is the failover token?",
        "ZEBRA-7731": "What is the compensation review code name for the salary bands?",
        "OSPREY-9058": "What is the code word for the expense fraud investigation case?",
        "HERON-2290": "What is the Globex welcome code?",
    }
    allowed = {"KESTREL-4412": {"alice"}, "ZEBRA-7731": {"bob"}, "OSPREY-9058": set(), "HERON-2290": {"gina"}}
    for token, question in questions.items():
        for user in ("alice", "bob", "carol", "gina"):
            blob = json.dumps(ask(handbook_dir, question, user))
            if user not in allowed[token]:
                assert token not in blob, (token, user)


def test_unknown_user_is_a_clear_error(handbook_dir: Path) -> None:
    proc = run_cli("ask", "hello", "--user", "alise", cwd=handbook_dir)
    assert proc.returncode == 2
    assert "did you mean 'alice'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_validate_and_export(handbook_dir: Path) -> None:
    proc = run_cli("validate", "--json", cwd=handbook_dir, check=True)
    data = json.loads(proc.stdout)
    assert data["valid"] and data["pipeline"] == "hybrid" and "alice" in data["users"]
    proc = run_cli("export", cwd=handbook_dir, check=True)
    text = (handbook_dir / "ragconf-export" / "retrieval.yaml").read_text()
    assert "retrieval.yaml" in proc.stdout and "StoreBM25Retriever" in text and "access_guard" in text
    assert "DocumentJoiner" in text


def test_config_mistakes_exit_2_without_traceback(handbook_dir: Path) -> None:
    for args, needle in [
        (["validate", "pipeline=hybird"], "did you mean 'hybrid'"),
        (["validate", "pipeline.components.bm25.params.topk=3"], "did you mean 'top_k'"),
        (["validate", "pipeline.components.bm25.type=bm25"], "pipeline.components.bm25.type"),
        (["validate", "embedder.batch_size=lots"], "embedder.batch_size"),
        (["validate", "pipeline.connections.0.receiver=fuse.docs"], "pipeline.connections[0].receiver"),
    ]:
        proc = run_cli(*args, cwd=handbook_dir)
        assert proc.returncode == 2, (args, proc.stderr)
        assert needle in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr


def test_ask_run_is_traced_per_component(handbook_dir: Path, monkeypatch) -> None:
    """The tracked ask run carries a trace: one span per pipeline component with its latency and the
    document ids it returned, and the policy steps with the same decision ids the answer reports."""
    out = ask(handbook_dir, "When should we fail over the primary database?", "alice")
    assert out["run_id"]
    trace = run_artifact(handbook_dir, out["run_id"], "trace.json", monkeypatch)
    spans = {s["name"]: s for s in trace["spans"]}
    for name in ("component.bm25", "component.dense", "component.fuse", "component.access_guard", "component.answer"):
        assert spans[name]["duration_ms"] >= 0 and spans[name]["end_ns"] >= spans[name]["start_ns"]
    guard = spans["component.access_guard"]
    assert guard["attributes"]["decision_id"] == out["decision_ids"]["access.documents"]
    assert set(guard["attributes"]["document_ids"]) >= {d["chunk_id"] for d in out["documents"]}
    assert spans["policy.access.filter"]["attributes"]["decision_id"] == out["decision_ids"]["access.filter"]
    assert spans["policy.routing"]["attributes"]["decision_id"] == out["decision_ids"]["routing"]
    assert spans["policy.output"]["attributes"]["decision_id"] == out["decision_ids"]["output"]
    by_id = {s["span_id"]: s for s in trace["spans"]}
    assert by_id[spans["component.bm25"]["parent_id"]]["name"] == "pipeline.run"
    assert "When should" not in json.dumps(trace)  # ids and sizes only, never the query or content


def test_ask_before_ingest_says_what_to_do(tmp_path: Path) -> None:
    proc = run_cli("ask", "hello", "--user", "alice", cwd=tmp_path)
    assert proc.returncode == 0
    assert "is empty: run `ragconf ingest` first" in proc.stderr


def test_pii_is_redacted_from_answer_logs_when_the_output_policy_says_so(handbook_dir: Path, monkeypatch) -> None:
    """Confidential context -> the output policy requires redaction of answers *and logs*: the question
    logged with the ask run has its e-mail address masked (the answer JSON still echoes the user's own text)."""
    q = "When should we fail over the primary database? Reply to jane.doe@example.com"
    out = ask(handbook_dir, q, "alice")
    assert any(d["meta"].get("classification") == "confidential" for d in out["documents"])
    logged = run_artifact(handbook_dir, out["run_id"], "ask.json", monkeypatch)
    assert "jane.doe@example.com" not in logged["question"] and "<EMAIL_ADDRESS>" in logged["question"]
