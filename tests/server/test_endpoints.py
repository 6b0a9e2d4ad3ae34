"""The endpoints through the real server: /v1/ask (JSON and SSE), /v1/retrieve, /v1/chat/completions with the
official openai SDK (streaming and not, with the OpenAI request fields chat UIs send), /v1/feedback on the ask's
MLflow run, health, metrics, limits, docs."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.conftest import run_cli
from tests.server.conftest import Server

FAILOVER = "When should we fail over the primary database?"


def sse_events(response: httpx.Response) -> list[tuple[str, Any]]:
    """(event, data) pairs of a Server-Sent Events stream."""
    events, name, data = [], "message", []
    for line in response.iter_lines():
        if line == "":
            if data:
                raw = "\n".join(data)
                events.append((name, raw if raw == "[DONE]" else json.loads(raw)))
            name, data = "message", []
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
    return events


def test_ask_returns_what_ask_json_prints(server: Server) -> None:
    r = httpx.post(server.url + "/v1/ask", json={"question": FAILOVER}, headers=server.headers("alice"), timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    cli = run_cli("ask", FAILOVER, "--user", "alice", "--json", *server.overrides, cwd=server.work, check=True)
    expected = json.loads(cli.stdout)
    assert set(body) == set(expected)
    assert body["answer"] == expected["answer"] and body["citations"] == expected["citations"]
    assert [d["chunk_id"] for d in body["documents"]] == [d["chunk_id"] for d in expected["documents"]]
    assert body["user"] == "alice" and body["run_id"] and body["decision_ids"]["access.filter"]
    assert "replication lag" in body["answer"]


def test_ask_stream_sends_documents_deltas_and_final(server: Server) -> None:
    with httpx.stream(
        "POST",
        server.url + "/v1/ask",
        json={"question": FAILOVER, "stream": True},
        headers=server.headers("alice"),
        timeout=30,
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    names = [n for n, _ in events]
    assert names[0] == "documents" and names[-1] == "final" and "delta" in names
    docs = events[0][1]["documents"]
    final = events[-1][1]
    text = "".join(d["text"] for n, d in events if n == "delta")
    assert text.strip() == final["answer"].strip()
    assert final["citations"] and final["decision_ids"]["routing"] and final["run_id"]
    assert {c["chunk_id"] for c in final["citations"]} <= {d["chunk_id"] for d in docs}
    assert final["replaced"] is False and final["notice"] is None


def test_stream_redacts_pii_before_it_leaves(server: Server) -> None:
    """The output policy requires redaction when any passage is confidential: a question carrying an e-mail
    address must not see it echoed unredacted in any streamed delta (nor in the final answer)."""
    q = "When should we fail over the primary database? Reply to jane.doe@example.com"
    with httpx.stream(
        "POST",
        server.url + "/v1/ask",
        json={"question": q, "stream": True},
        headers=server.headers("alice"),
        timeout=60,
    ) as r:
        events = sse_events(r)
    assert "jane.doe@example.com" not in json.dumps([d for n, d in events if n in ("delta", "final")])


def test_retrieve_returns_only_documents(server: Server) -> None:
    r = httpx.post(
        server.url + "/v1/retrieve", json={"question": FAILOVER, "top_k": 3}, headers=server.headers("carol")
    )
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"question", "user", "documents", "decision_ids", "timings_ms", "run_id"}
    assert body["user"] == "carol" and len(body["documents"]) <= 3
    assert all(d["meta"].get("classification", "public") == "public" for d in body["documents"])


@pytest.fixture()
def openai_client(server: Server) -> Any:
    import openai

    return openai.OpenAI(base_url=server.url + "/v1", api_key=server.keys["alice"], max_retries=0, timeout=60)


def test_chat_completions_with_the_openai_sdk(openai_client: Any) -> None:
    out = openai_client.chat.completions.create(model="ragconf", messages=[{"role": "user", "content": FAILOVER}])
    content = out.choices[0].message.content
    assert "replication lag" in content and "[1]" in content and "Sources:" in content
    extra = out.model_extra
    assert extra["citations"][0]["doc_id"] == "engineering/database-failover.md"
    assert extra["ragconf"]["run_id"] and extra["ragconf"]["decision_ids"]["access.filter"]


def test_chat_completions_stream_with_the_openai_sdk(openai_client: Any) -> None:
    stream = openai_client.chat.completions.create(
        model="ragconf",
        messages=[{"role": "user", "content": FAILOVER}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "replication lag" in text and "Sources:" in text
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason == "stop"]
    assert len(finals) == 1 and finals[0].model_extra["citations"]
    assert chunks[-1].usage is not None


# what chat UIs and SDK users send along: OpenAI's documented request fields, which ragconf accepts and ignores
OPENAI_PARAMS: dict[str, Any] = {
    "temperature": 0.2,
    "top_p": 0.9,
    "max_tokens": 256,
    "max_completion_tokens": 256,
    "n": 1,
    "stop": ["\n\n\n"],
    "presence_penalty": 0.1,
    "frequency_penalty": 0.1,
    "seed": 7,
    "logit_bias": {"50256": -100},
    "logprobs": False,
    "user": "alice",  # OpenAI's end-user label: never the principal
    "safety_identifier": "hash-of-alice",
    "metadata": {"user_id": "alice", "app": "chat-ui"},
    "store": False,
    "tools": [
        {
            "type": "function",
            "function": {"name": "lookup", "description": "Look it up", "parameters": {"type": "object"}},
        }
    ],
    "tool_choice": "auto",
    "parallel_tool_calls": False,
    "response_format": {"type": "text"},
    "reasoning_effort": "low",
    "service_tier": "auto",
    "verbosity": "low",
    "prompt_cache_key": "chat-ui",
    "modalities": ["text"],
}


def _audit_principals(server: Server, run_id: str) -> set[str]:
    path = server.work / "state" / "audit.jsonl"
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if run_id in line]
    return {line["principal"] for line in lines if line.get("run_id") == run_id}


def test_chat_accepts_openai_request_fields_and_user_is_not_the_principal(server: Server) -> None:
    """carol (public material only) sends `user: "alice"` and every other common OpenAI field, through the SDK,
    with and without streaming: 200, and the answer is carol's, not alice's."""
    import openai

    client = openai.OpenAI(base_url=server.url + "/v1", api_key=server.keys["carol"], max_retries=0, timeout=60)
    messages = [{"role": "user", "content": FAILOVER}]
    plain = client.chat.completions.create(model="ragconf", messages=messages)
    out = client.chat.completions.create(model="ragconf", messages=messages, **OPENAI_PARAMS)
    assert out.choices[0].message.content == plain.choices[0].message.content
    extra = out.model_extra["ragconf"]
    assert extra["documents"] == plain.model_extra["ragconf"]["documents"]
    assert "engineering/database-failover.md" not in {c["doc_id"] for c in out.model_extra["citations"]}
    assert _audit_principals(server, extra["run_id"]) == {"carol"}
    alice = openai.OpenAI(base_url=server.url + "/v1", api_key=server.keys["alice"], max_retries=0, timeout=60)
    assert (
        alice.chat.completions.create(model="ragconf", messages=messages).model_extra["ragconf"]["documents"]
        != (extra["documents"])
    )

    stream = client.chat.completions.create(
        model="ragconf",
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
        **OPENAI_PARAMS,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() == plain.choices[0].message.content.strip() and chunks[-1].usage is not None
    (final,) = [c for c in chunks if c.choices and c.choices[0].finish_reason == "stop"]
    assert final.model_extra["ragconf"]["documents"] == extra["documents"]
    assert _audit_principals(server, final.model_extra["ragconf"]["run_id"]) == {"carol"}


def test_chat_accepts_a_client_history_with_tool_calls(server: Server) -> None:
    history = [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "Look up the office hours"},
        {
            "role": "assistant",
            "content": None,
            "refusal": None,
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "no result"},
        {"role": "user", "content": [{"type": "text", "text": FAILOVER}]},
    ]
    r = httpx.post(
        server.url + "/v1/chat/completions",
        json={"model": "ragconf", "messages": history, "user": "alice"},
        headers=server.headers("carol"),
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert _audit_principals(server, r.json()["ragconf"]["run_id"]) == {"carol"}


@pytest.mark.parametrize(
    ("extra", "status"),
    [
        ({"n": 2}, 422),  # one answer per request
        ({"user": {"id": "alice"}}, 422),  # OpenAI's `user` is a string label
        ({"metadata": {"principal": {"groups": ["sre"]}}}, 422),  # string values only
        ({"temprature": 0.2}, 422),  # a misspelt field is unknown, not ignored
        ({"tools": [{"type": "function", "function": {"description": "x" * 25000}}]}, 413),
    ],
)
def test_chat_still_validates_and_limits(server: Server, extra: dict[str, Any], status: int) -> None:
    body = {"model": "ragconf", "messages": [{"role": "user", "content": FAILOVER}], **extra}
    r = httpx.post(server.url + "/v1/chat/completions", json=body, headers=server.headers("carol"), timeout=60)
    assert r.status_code == status, r.text
    if status == 422:
        assert r.json()["error"]["type"] == "invalid_request_error"


def test_chat_question_limit_holds_with_openai_fields(server: Server) -> None:
    long = {**OPENAI_PARAMS, "messages": [{"role": "user", "content": "why " * 200}]}
    r = httpx.post(server.url + "/v1/chat/completions", json=long, headers=server.headers("carol"), timeout=60)
    assert r.status_code == 422 and "max_question_chars" in r.json()["error"]["message"]


def test_chat_refusal_and_auth_errors_are_openai_errors(server: Server) -> None:
    import openai

    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="rk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="ragconf", messages=[{"role": "user", "content": FAILOVER}])


def test_feedback_is_recorded_on_the_ask_run(server: Server) -> None:
    ask = httpx.post(server.url + "/v1/ask", json={"question": FAILOVER}, headers=server.headers("alice"), timeout=30)
    run_id = ask.json()["run_id"]
    payload = {"run_id": run_id, "rating": 1, "comment": "spot on"}
    # someone else cannot rate alice's run; unknown runs are 404
    assert (
        httpx.post(server.url + "/v1/feedback", json=payload, headers=server.headers("carol"), timeout=60).status_code
        == 403
    )
    missing = {**payload, "run_id": "0" * 32}
    assert (
        httpx.post(server.url + "/v1/feedback", json=missing, headers=server.headers("alice"), timeout=60).status_code
        == 404
    )
    r = httpx.post(server.url + "/v1/feedback", json=payload, headers=server.headers("alice"), timeout=60)
    assert r.status_code == 200, r.text
    from ragconf.service import RagService
    from ragconf.tracking import get_run

    with RagService.from_overrides(server.overrides) as svc:
        run = get_run(svc.tracking_config(), run_id)
    assert run["kind"] == "ask" and run["metrics"]["feedback.rating"] == 1.0
    assert run["tags"]["feedback.comment"] == "spot on" and run["tags"]["ragconf.source"] == "server"


def test_health_ready_metrics_and_docs(server: Server) -> None:
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(server.url + "/readyz").json() == {"ready": True}  # a probe learns nothing about the corpus
    assert httpx.get(server.url + "/readyz", headers=server.headers("carol")).json() == {"ready": True}
    ready = httpx.get(server.url + "/readyz", headers=server.headers("root")).json()  # the admin role
    assert ready["ready"] is True and ready["store_documents"] > 0 and ready["policy_revision"]
    httpx.post(server.url + "/v1/ask", json={"question": FAILOVER}, headers=server.headers("carol"), timeout=30)
    httpx.post(server.url + "/v1/ask", json={"question": FAILOVER})
    metrics = httpx.get(server.url + "/metrics", headers=server.headers("prom")).text  # test_auth: who may
    assert 'ragconf_requests_total{route="/v1/ask",status="200"}' in metrics
    assert 'ragconf_denials_total{route="/v1/ask"}' in metrics
    assert "ragconf_request_latency_seconds_bucket" in metrics
    spec = httpx.get(server.url + "/openapi.json").json()
    assert {"/v1/ask", "/v1/retrieve", "/v1/chat/completions", "/v1/feedback"} <= set(spec["paths"])
    assert httpx.get(server.url + "/docs").status_code == 200


def test_limits_body_question_top_k(server: Server) -> None:
    h = server.headers("carol")
    big = httpx.post(server.url + "/v1/ask", json={"question": "x" * 30000}, headers=h)
    assert big.status_code == 413 and "max_body_bytes" in big.json()["detail"]
    long = httpx.post(server.url + "/v1/ask", json={"question": "why " * 200}, headers=h)
    assert long.status_code == 422 and "max_question_chars" in long.json()["detail"]
    top = httpx.post(server.url + "/v1/retrieve", json={"question": "wifi", "top_k": 500}, headers=h)
    assert top.status_code == 422 and "max_top_k" in top.json()["detail"]
    chunked = httpx.post(
        server.url + "/v1/ask",
        content=iter([b'{"question": "', b"y" * 25000, b'"}']),
        headers={**h, "content-type": "application/json"},
    )
    assert chunked.status_code == 413
