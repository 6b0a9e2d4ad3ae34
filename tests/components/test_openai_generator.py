"""OpenAICompatibleGenerator against a real local HTTP server speaking the chat.completions protocol."""

from __future__ import annotations

import json
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
from haystack import Document, Pipeline
from haystack.components.builders import PromptBuilder

from ragconf.components.generators import DEFAULT_PROMPT_TEMPLATE, OpenAICompatibleGenerator
from ragconf.errors import RagconfError, SpecError
from tests.fakes import chat_completion, local_server, read_json, send_json

REPLY = "The meal allowance abroad is 40 EUR per day [1]."


class _FakeOpenAI(BaseHTTPRequestHandler):
    requests: list[dict[str, Any]] = []
    fail = False

    def log_message(self, *args: Any) -> None:  # keep pytest output clean
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        body = read_json(self)
        auth = self.headers.get("Authorization")
        type(self).requests.append({"path": self.path, "auth": auth, "body": body})
        if type(self).fail or self.path != "/v1/chat/completions":
            error = {"error": {"message": "boom", "type": "server_error"}}
            send_json(self, error, 500 if type(self).fail else 404)
        else:
            send_json(self, chat_completion(REPLY, body.get("model", "fake"), 42, 12))


@pytest.fixture()
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    _FakeOpenAI.requests = []
    _FakeOpenAI.fail = False
    with local_server(_FakeOpenAI) as url:
        yield url


def test_round_trip_through_the_real_client(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGCONF_TEST_KEY", "sk-test-123")
    gen = OpenAICompatibleGenerator(
        model="tiny-model",
        base_url=server,
        api_key_env="RAGCONF_TEST_KEY",
        generation_kwargs={"temperature": 0.0, "max_tokens": 64},
        timeout=10,
    )
    out = gen.run(prompt="What is the meal allowance?")
    assert out["replies"] == [REPLY]
    assert out["meta"][0]["model"] == "tiny-model" and out["meta"][0]["finish_reason"] == "stop"
    req = _FakeOpenAI.requests[-1]
    assert req["path"] == "/v1/chat/completions"
    assert req["auth"] == "Bearer sk-test-123"
    assert req["body"]["model"] == "tiny-model"
    assert req["body"]["temperature"] == 0.0 and req["body"]["max_tokens"] == 64
    assert req["body"]["messages"] == [{"role": "user", "content": "What is the meal allowance?"}]


def test_in_a_pipeline_with_the_default_prompt(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-other")
    p = Pipeline()
    p.add_component("prompt", PromptBuilder(template=DEFAULT_PROMPT_TEMPLATE))
    p.add_component("llm", OpenAICompatibleGenerator(model="m", base_url=server, system_prompt="Be brief."))
    p.connect("prompt.prompt", "llm.prompt")
    docs = [Document(content="Employees travelling abroad receive a meal allowance of 40 EUR per day.")]
    res = p.run({"prompt": {"query": "Meal allowance?", "documents": docs}})
    assert res["llm"]["replies"] == [REPLY]
    msgs = _FakeOpenAI.requests[-1]["body"]["messages"]
    assert msgs[0] == {"role": "system", "content": "Be brief."}
    assert "[1] Employees travelling abroad" in msgs[1]["content"]


def test_missing_env_var_is_a_clear_spec_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAGCONF_MISSING_KEY", raising=False)
    gen = OpenAICompatibleGenerator(model="m", base_url="http://127.0.0.1:9/v1", api_key_env="RAGCONF_MISSING_KEY")
    with pytest.raises(SpecError, match="RAGCONF_MISSING_KEY"):
        gen.warm_up()
    with pytest.raises(SpecError, match="RAGCONF_MISSING_KEY"):
        gen.run(prompt="hi")


def test_server_error_is_a_ragconf_error(server: str) -> None:
    _FakeOpenAI.fail = True
    gen = OpenAICompatibleGenerator(model="m", base_url=server, api_key_env=None, max_retries=0, timeout=5)
    with pytest.raises(RagconfError, match="failed"):
        gen.run(prompt="hi")
    assert _FakeOpenAI.requests[-1]["auth"] == "Bearer unused"


def test_selected_by_config_end_to_end_with_routing_and_token_counts(
    server: str, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """generator=openai through RagApp: the prompt holds only documents the user may see, the answer's
    citations resolve, token usage is counted; confidential context is never sent to the remote model."""
    from ragconf.runtime import RagApp

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAGCONF_TEST_KEY", "sk-test")
    rag = RagApp.from_overrides(
        [
            "generator=openai",
            f"generator.components.llm.params.base_url={server}",
            "generator.components.llm.params.api_key_env=RAGCONF_TEST_KEY",
        ]
    )
    try:
        rag.ingest()
        ans = rag.ask("What is the meal allowance when travelling abroad?", "carol")
        assert not ans.refused, ans.reason
        assert ans.route == "openai" and ans.answer.startswith("The meal allowance")
        assert ans.usage == {"prompt_tokens": 42, "completion_tokens": 12}
        assert [c["n"] for c in ans.citations] == [1]
        sent = json.dumps(_FakeOpenAI.requests[-1]["body"])
        assert all(d["meta"].get("classification", "public") == "public" for d in ans.documents)
        assert "KESTREL-4412" not in sent

        n_requests = len(_FakeOpenAI.requests)
        ans = rag.ask("When should we fail over the primary database? What is the failover token?", "alice")
        assert len(_FakeOpenAI.requests) == n_requests  # confidential context never left the machine
        assert ans.refused and ans.reason
    finally:
        rag.close()
