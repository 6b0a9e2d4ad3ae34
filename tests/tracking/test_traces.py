"""Native MLflow traces: every ask (Python API, CLI, server) and every evaluated query is a trace in the run's
Traces tab, one span per pipeline component and policy step, ids only of documents the principal may see;
feedback lands as an assessment on the trace. Real pipeline, policy engine, MLflow store and server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import run_cli
from tests.server.conftest import Server, server  # noqa: F401  (the session's real uvicorn server)

FAILOVER = "How do I fail over the primary database?"


def _mlflow(workdir: Path) -> Any:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{workdir.resolve() / 'mlflow.db'}")
    return mlflow


def _trace_of(workdir: Path, run_key: str) -> Any:
    from ragconf.tracking import get_run

    run = get_run({"workdir": str(workdir)}, run_key)
    trace_id = run["tags"]["ragconf.trace_id"]
    trace = _mlflow(workdir).get_trace(trace_id)
    assert trace.info.request_metadata.get("mlflow.sourceRun") == run["run_id"]
    return run, trace


def _service(workdir: Path, *extra: str) -> Any:
    from ragconf.service import RagService

    return RagService.from_overrides([f"project.workdir={workdir}", *extra])


@pytest.fixture(scope="module")
def hb(handbook_dir: Path, monkeypatch_module: pytest.MonkeyPatch) -> Path:
    monkeypatch_module.chdir(handbook_dir)
    return handbook_dir / ".ragconf"


@pytest.fixture(scope="module")
def monkeypatch_module() -> Any:
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_python_ask_is_a_trace_with_component_and_policy_spans(hb: Path) -> None:
    from ragconf.tracking import flush

    with _service(hb) as svc:
        answer = svc.ask(FAILOVER, "alice")
        assert flush(120)
        run, trace = _trace_of(hb, answer.run_id)
        names = [s.name for s in trace.data.spans]
        for comp in svc.spec.pipeline.components:
            assert f"component.{comp}" in names, names
        assert {"policy.access.filter", "policy.output", "generation"} <= set(names)
        assert run["tags"]["ragconf.source"] == "python"
        root = next(s for s in trace.data.spans if s.parent_id is None)
        assert root.inputs == {"user": "alice", "question_chars": len(FAILOVER)}  # ids only by default
        assert FAILOVER not in json.dumps(trace.to_dict())
        listed: set[str] = set()
        for span in trace.data.spans:
            listed |= set(span.attributes.get("document_ids") or [])
            if span.name.startswith("component.") and span.attributes.get("type") != "AccessGuard":
                assert "document_ids" not in span.attributes  # candidates before the guard are counted only
            assert span.end_time_ns >= span.start_time_ns
        assert {d["chunk_id"] for d in answer.documents} <= listed
        # every listed id is one the policy lets alice see (checked afresh on the stored chunk)
        chunks = svc.rag.store.filter_documents({"field": "id", "operator": "in", "value": sorted(listed)})
        allowed = svc.rag.policy.check_documents(svc.principal("alice"), chunks, {"action": "audit"}).allowed
        assert len(chunks) == len(listed) == len(allowed)
    guard = [s for s in trace.data.spans if s.attributes.get("type") == "AccessGuard"]
    assert guard and guard[0].attributes.get("decision_id")
    types = {s.name: s.span_type for s in trace.data.spans}
    assert types["policy.access.filter"] == "GUARDRAIL" and types["generation"] == "LLM"


def test_content_capture_setting(hb: Path) -> None:
    from ragconf.tracking import flush

    with _service(hb, "tracking.trace_content=full") as svc:
        answer = svc.ask(FAILOVER, "alice")
        flush(120)
    _, trace = _trace_of(hb, answer.run_id)
    root = next(s for s in trace.data.spans if s.parent_id is None)
    if answer.redact_logs:  # the output policy required redaction: full is downgraded
        assert root.inputs["content"] == "redacted"
    else:
        assert root.inputs["question"] == FAILOVER and root.outputs["answer"] == answer.answer
    with pytest.raises(Exception, match="trace_content"):
        _service(hb, "tracking.trace_content=everything")


def test_cli_ask_and_eval_queries_are_traces(hb: Path, handbook_dir: Path) -> None:
    proc = run_cli("ask", FAILOVER, "--user", "alice", "--json", cwd=handbook_dir)
    assert proc.returncode == 0, proc.stderr
    key = json.loads(proc.stdout)["run_id"]
    run_cli("runs", "list", cwd=handbook_dir, check=True)  # the next command writes what the last one spooled
    run, trace = _trace_of(hb, key)
    assert run["tags"]["ragconf.source"] == "cli" and len(trace.data.spans) > 3

    proc = run_cli("eval", "eval=handbook", "eval.personas=[]", "--json", cwd=handbook_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout)
    mlflow = _mlflow(hb)
    exp = mlflow.get_run(out["run_id"]).info.experiment_id
    traces = mlflow.search_traces(run_id=out["run_id"], locations=[exp], return_type="list")
    assert len(traces) == out["queries"]
    qids = {t.info.tags["ragconf.query_id"] for t in traces}
    assert len(qids) == out["queries"]


def test_server_ask_trace_and_feedback_assessment(server: Server) -> None:  # noqa: F811
    ask = httpx.post(server.url + "/v1/ask", json={"question": FAILOVER}, headers=server.headers("alice"), timeout=60)
    assert ask.status_code == 200, ask.text
    run_id = ask.json()["run_id"]
    r = httpx.post(
        server.url + "/v1/feedback",
        json={"run_id": run_id, "rating": 1, "comment": "spot on"},
        headers=server.headers("alice"),
        timeout=60,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["trace_id"] and body["assessment_id"]
    _, trace = _trace_of(server.work / "state", run_id)
    fb = [a for a in trace.info.assessments if a.name == "user_rating"]
    assert len(fb) == 1 and fb[0].value == 1 and fb[0].source.source_id == "alice" and fb[0].rationale == "spot on"
    assert trace.info.tags["ragconf.kind"] == "ask"


def test_process_writer_hands_ask_runs_to_the_spool_writer(hb: Path) -> None:
    """`tracking.ask_writer=process` (what a server uses): the asking process's thread only spools the run; the
    detached writer process logs it to MLflow, trace included, without this process draining the spool."""
    import time

    from ragconf.tracking import flush

    with _service(hb, "tracking.ask_writer=process") as svc:
        assert svc.tracker.writer == "process"
        answer = svc.ask(FAILOVER, "alice")
        assert flush(60)
    client = _mlflow(hb).MlflowClient()
    exp = client.get_experiment_by_name("ragconf") or next(iter(client.search_experiments()))
    found: list[Any] = []
    deadline = time.monotonic() + 120
    while not found and time.monotonic() < deadline:
        found = client.search_runs([exp.experiment_id], f"tags.`ragconf.run_key` = '{answer.run_id}'")
        time.sleep(0.5)
    assert found, "the writer process did not log the spooled run"
    run, trace = _trace_of(hb, answer.run_id)
    assert run["tags"]["ragconf.source"] == "python" and len(trace.data.spans) > 3
    with _service(hb) as svc:
        assert svc.tracker.writer == "thread"  # auto: a Python caller writes in a thread of its own
