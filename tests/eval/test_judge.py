"""Judged answer metrics (``eval.judge``) against a real local HTTP judge speaking the OpenAI chat API, called
through MLflow's GenAI judges. The fake judge is an oracle that can be computed by hand: a sentence is
supported by a passage iff every content word of the sentence occurs in the passage; an answer is relevant iff
it shares a content word with the question."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from ragconf.errors import EvalError
from ragconf.eval.judge import AnswerJudge
from ragconf.spec.models import JudgeSpec
from tests.conftest import run_cli
from tests.examples.test_handbook import run_artifact
from tests.fakes import chat_completion, local_server, read_json, send_json

KEY = "sk-judge-secret-4711"


def _words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if len(w) > 3}


def _user_fields(content: str) -> tuple[str, dict[str, Any]]:
    """MLflow's judge user message: ``inputs: <json>`` and ``outputs: <json>`` blocks, in either order."""
    parts = dict(re.findall(r"^\s*(inputs|outputs): (.*?)(?=^\s*(?:inputs|outputs): |\Z)", content, re.S | re.M))
    assert set(parts) == {"inputs", "outputs"}, content
    return json.loads(parts["outputs"]), json.loads(parts["inputs"])


class _FakeJudge(BaseHTTPRequestHandler):
    requests: list[dict[str, Any]] = []
    mode = "oracle"  # or "garbage": replies that are not the requested JSON

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        body = read_json(self)
        type(self).requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        system = body["messages"][0]["content"]
        outputs, inputs = _user_fields(body["messages"][-1]["content"])
        if "supported by a passage" in system:
            ok = bool(_words(outputs)) and _words(outputs) <= _words(inputs["passage"])
        else:
            ok = bool(_words(outputs) & _words(inputs["question"]))
        content = json.dumps({"result": "yes" if ok else "no", "rationale": "oracle"})
        if type(self).mode == "garbage":
            content = "I think so, probably."
        send_json(self, chat_completion(content, body.get("model", "judge")))


@pytest.fixture()
def judge_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("JUDGE_KEY", KEY)
    _FakeJudge.requests = []
    _FakeJudge.mode = "oracle"
    with local_server(_FakeJudge) as url:
        yield url


def _judge(url: str, **kw: Any) -> AnswerJudge:
    return AnswerJudge(JudgeSpec(model="judge-1", base_url=url, api_key_env="JUDGE_KEY", **kw))


PASSAGES = ["Paris is the capital of France.", "The moon orbits the earth every month."]


def test_sentence_faithfulness_citation_correctness_and_relevance(judge_url: str) -> None:
    answer = (
        "Paris is the capital of France [1]. The moon is made of cheese [2]. "
        "Everyone agrees about this forever. Paris capital France [1][2]."
    )
    got = _judge(judge_url).judge("What is the capital of France?", answer, PASSAGES)
    # sentences: supported by [1]; not supported by [2]; uncited (unsupported, no call); supported by [1] only
    assert got.sentences == 4
    assert got.faithfulness == pytest.approx(2 / 4)
    # pairs: (s1,[1]) yes, (s2,[2]) no, (s4,[1]) yes, (s4,[2]) no
    assert got.pairs == 4 and got.citation_correctness == pytest.approx(2 / 4)
    assert got.answer_relevance == 1.0
    assert got.calls == 5 and got.errors == 0
    sent = _FakeJudge.requests
    assert len(sent) == 5 and all(r["path"] == "/v1/chat/completions" for r in sent)
    assert all(r["auth"] == f"Bearer {KEY}" and r["body"]["model"] == "judge-1" for r in sent)
    assert all(r["body"]["temperature"] == 0 for r in sent)


def test_off_topic_uncited_answer_scores_zero(judge_url: str) -> None:
    got = _judge(judge_url).judge("What is the capital of France?", "Bananas are yellow.", PASSAGES)
    assert got.faithfulness == 0.0 and got.citation_correctness == 0.0 and got.answer_relevance == 0.0
    assert got.calls == 1  # only relevance: an uncited sentence needs no call to be unsupported


def test_metrics_subset_and_sentence_cap(judge_url: str) -> None:
    answer = " ".join("Paris is the capital of France [1]." for _ in range(5))
    got = _judge(judge_url, metrics=["citation_correctness"], max_sentences=2).judge("q", answer, PASSAGES)
    assert got.citation_correctness == 1.0 and got.faithfulness is None and got.answer_relevance is None
    assert got.calls == 2 and got.sentences == 2


def test_unparseable_verdicts_are_errors_not_passes(judge_url: str) -> None:
    _FakeJudge.mode = "garbage"
    got = _judge(judge_url).judge("capital of France?", "Paris is the capital of France [1].", PASSAGES)
    assert got.errors == 2 and got.calls == 2
    assert got.faithfulness is None and got.citation_correctness is None and got.answer_relevance is None


def test_unreachable_judge_is_one_clean_error_without_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUDGE_KEY", KEY)
    judge = _judge("http://127.0.0.1:9/v1", timeout_s=2)
    with pytest.raises(EvalError) as err:
        judge.judge("q", "Paris is the capital of France [1].", PASSAGES)
    assert "http://127.0.0.1:9/v1/chat/completions" in str(err.value) and KEY not in str(err.value)


def test_missing_key_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_JUDGE_KEY", raising=False)
    with pytest.raises(EvalError, match="NO_SUCH_JUDGE_KEY"):
        AnswerJudge(JudgeSpec(model="m", base_url="http://127.0.0.1:9/v1", api_key_env="NO_SUCH_JUDGE_KEY"))


def _eval(handbook_dir: Path, url: str, *extra: str) -> dict[str, Any]:
    judge = [
        "eval.judge.model=judge-1",
        f"eval.judge.base_url={url}",
        "eval.judge.api_key_env=JUDGE_KEY",
        "eval.personas=[]",
        "eval.gates=[]",
    ]
    proc = run_cli("eval", "eval=handbook", *judge, *extra, "--json", cwd=handbook_dir, env={"JUDGE_KEY": KEY})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert KEY not in proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def _confidential_text(handbook_dir: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Distinctive lines of the handbook's confidential and restricted chunks, as stored."""
    from ragconf.runtime import RagApp

    monkeypatch.chdir(handbook_dir)
    rag = RagApp.from_overrides()
    try:
        chunks = rag.store.filter_documents()
    finally:
        rag.close()
    texts = [c.content or "" for c in chunks if c.meta.get("classification") in ("confidential", "restricted")]
    assert texts
    return [t.strip()[:50] for t in texts if len(t.strip()) > 50]


def test_eval_through_the_cli_routes_the_judge_by_policy(
    handbook_dir: Path, judge_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A remote judge never receives passages the routing policy keeps local (alice's confidential runbook
    answers are counted as skipped); a local judge judges every answer. Metrics land on the run."""
    remote = _eval(handbook_dir, judge_url)["metrics"]
    queries = remote["queries"]
    assert remote["judge_skipped_by_policy"] >= 1
    assert remote["judge_answers"] + remote["judge_skipped_by_policy"] == queries
    sent = json.dumps([r["body"] for r in _FakeJudge.requests])
    leaked = [t for t in _confidential_text(handbook_dir, monkeypatch) if json.dumps(t)[1:-1] in sent]
    assert not leaked, leaked
    for name in ("judge_faithfulness", "judge_citation_correctness", "judge_answer_relevance"):
        assert 0.0 <= remote[name] <= 1.0
    assert remote["judge_errors"] == 0 and remote["judge_calls"] == len(_FakeJudge.requests)

    _FakeJudge.requests = []
    local = _eval(handbook_dir, judge_url, "eval.judge.locality=local")
    m = local["metrics"]
    assert m["judge_skipped_by_policy"] == 0 and m["judge_answers"] == queries
    assert m["judge_answer_relevance"] > 0.5  # the extractive answers quote passages about the question

    judged = run_artifact(handbook_dir, local["run_id"], "eval/judge.json", monkeypatch)
    assert len(judged) == queries and all("rationale" not in v for v in judged.values())
    table = run_artifact(handbook_dir, local["run_id"], "eval/per_query.json", monkeypatch)
    assert set(table["columns"]) >= {"judge_faithfulness", "judge_citation_correctness", "judge_answer_relevance"}
    # each judged query's trace carries the judge's scores as LLM_JUDGE assessments (MLflow Traces tab)
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{handbook_dir / '.ragconf' / 'mlflow.db'}")
    exp = mlflow.get_run(local["run_id"]).info.experiment_id
    traces = mlflow.search_traces(run_id=local["run_id"], locations=[exp], return_type="list")
    scored = [
        a for t in traces for a in t.info.assessments if a.name.startswith("judge_") and a.source.source_id == "judge-1"
    ]
    assert {a.name for a in scored} == {"judge_faithfulness", "judge_citation_correctness", "judge_answer_relevance"}
    assert all(a.source.source_type == "LLM_JUDGE" and 0.0 <= a.value <= 1.0 for a in scored)
