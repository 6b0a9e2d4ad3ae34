"""A second real server whose generator is the OpenAI-compatible one, pointed at a local fake endpoint that
streams tokens: token deltas reach the SSE client as they are produced, a slow generator call times out (504)
without blocking other requests, and a graceful shutdown (SIGTERM) writes every tracked run before exit."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from tests.conftest import run_cli
from tests.server.conftest import Server, make_world, start, stop
from tests.server.test_endpoints import sse_events

TOKENS = ["The ", "office ", "opens ", "at ", "8:00 ", "[1]."]
# an e-mail address split across tokens, in a cited sentence, then a second sentence
PII_TOKENS = ["Page ", "jane", ".doe@", "exam", "ple.com ", "before ", "failover [1]. ", "Then ", "promote [1]."]
NOCITE_TOKENS = ["Fail ", "over ", "when ", "the ", "primary ", "is ", "down."]


class _FakeStreamingOpenAI(BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        prompt = json.dumps(body.get("messages"))
        if "SLOWLY" in prompt:
            time.sleep(9)
        tokens = PII_TOKENS if "PIIPLEASE" in prompt else NOCITE_TOKENS if "NOCITE" in prompt else TOKENS
        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": "fake"}
        if not body.get("stream"):
            payload = json.dumps(
                {
                    **base,
                    "object": "chat.completion",
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": "".join(tokens)},
                        }
                    ],
                    "usage": {"prompt_tokens": 50, "completion_tokens": 6, "total_tokens": 56},
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for i, tok in enumerate(tokens):
            delta = {"role": "assistant", "content": tok} if i == 0 else {"content": tok}
            chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
            time.sleep(0.02)
        done = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        usage = {**base, "choices": [], "usage": {"prompt_tokens": 50, "completion_tokens": 6, "total_tokens": 56}}
        self.wfile.write(f"data: {json.dumps(done)}\n\ndata: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
        self.wfile.flush()


def _llm_server(tmp_path_factory: pytest.TempPathFactory, *extra: str) -> Iterator[Server]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _FakeStreamingOpenAI)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    work = tmp_path_factory.mktemp("serve-llm")
    keys, overrides = make_world(work)
    run_cli("ingest", *overrides, cwd=work, check=True)
    overrides += [
        "generator=openai",
        f"generator.components.llm.params.base_url=http://127.0.0.1:{httpd.server_address[1]}/v1",
        "generator.components.llm.params.api_key_env=null",
        "+generator.components.llm.params.max_retries=0",
        "serve.request_timeout_s=5",
        "serve.threads=2",
        *extra,
    ]
    srv = start(work, keys, overrides)
    try:
        yield srv
    finally:
        stop(srv)
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def llm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from _llm_server(tmp_path_factory)


@pytest.fixture(scope="module")
def local_llm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The same OpenAI-compatible generator declared local (e.g. a vLLM on the premises): the routing policy
    lets confidential passages reach it, and the output policy requires redaction and citations."""
    yield from _llm_server(tmp_path_factory, "generator.locality=local", "serve.request_timeout_s=60")


FAILOVER_Q = "When should we fail over the primary database?"


def _stream(srv: Server, question: str, user: str) -> list[tuple[str, Any]]:
    with httpx.stream(
        "POST", srv.url + "/v1/ask", json={"question": question, "stream": True}, headers=srv.headers(user), timeout=30
    ) as r:
        assert r.status_code == 200, r.read()
        return sse_events(r)


def test_pii_split_across_tokens_never_leaves_unredacted(local_llm_server: Server) -> None:
    """alice's failover answer uses the confidential runbook, so the output policy requires PII redaction: an
    e-mail address the model emits across four tokens is redacted before any delta leaves the server (text is
    held back to a sentence boundary), in the final event and in the JSON answer."""
    events = _stream(local_llm_server, FAILOVER_Q + " PIIPLEASE", "alice")
    docs = events[0][1]
    assert events[0][0] == "documents" and docs["rules"]["redact_pii"] is True, docs
    assert any(d["meta"]["classification"] == "confidential" for d in docs["documents"])
    deltas = [d["text"] for n, d in events if n == "delta"]
    streamed = "".join(deltas)
    final = events[-1][1]
    assert len(deltas) >= 2  # released sentence by sentence, not one blob at the end
    for text in (streamed, final["answer"]):
        assert "jane.doe" not in text and "example.com" not in text and "<EMAIL_ADDRESS>" in text, text
    assert "EMAIL_ADDRESS" in final["redacted"] and final["citations"]
    r = httpx.post(
        local_llm_server.url + "/v1/ask",
        json={"question": FAILOVER_Q + " PIIPLEASE"},
        headers=local_llm_server.headers("alice"),
        timeout=30,
    )
    assert r.status_code == 200 and "jane.doe" not in r.text and "<EMAIL_ADDRESS>" in r.json()["answer"]


def test_uncited_answer_is_replaced_in_the_final_event(local_llm_server: Server) -> None:
    """Citations are required: an answer without any is replaced, and the final event says so (replaced,
    notice) so clients render the notice instead of the streamed text."""
    from ragconf.runtime import NO_CITED_ANSWER

    final = _stream(local_llm_server, FAILOVER_Q + " NOCITE", "alice")[-1]
    assert final[0] == "final"
    assert final[1]["replaced"] is True and final[1]["notice"] == NO_CITED_ANSWER
    assert final[1]["answer"] == NO_CITED_ANSWER and final[1]["citations"] == []


Q = "What are the office hours?"


def test_generator_tokens_stream_as_deltas(llm_server: Server) -> None:
    with httpx.stream(
        "POST",
        llm_server.url + "/v1/ask",
        json={"question": Q, "stream": True},
        headers=llm_server.headers("carol"),
        timeout=30,
    ) as r:
        assert r.status_code == 200
        events = sse_events(r)
    deltas = [d["text"] for n, d in events if n == "delta"]
    final = events[-1][1]
    assert events[0][0] == "documents" and events[-1][0] == "final"
    assert deltas == TOKENS  # one event per generator token, nothing buffered (no redaction for public docs)
    assert final["answer"] == "".join(TOKENS) and final["route"] == "openai" and final["citations"]
    assert final["usage"] == {"prompt_tokens": 50, "completion_tokens": 6}


def test_confidential_context_is_refused_for_the_remote_generator(llm_server: Server) -> None:
    """alice's failover question retrieves a confidential runbook: routing refuses the remote generator, 403
    with the policy's reason, also for a stream request (decided before anything is sent)."""
    for stream in (False, True):
        r = httpx.post(
            llm_server.url + "/v1/ask",
            json={"question": "When should we fail over the primary database?", "stream": stream},
            headers=llm_server.headers("alice"),
            timeout=30,
        )
        assert r.status_code == 403, r.text
        assert r.json()["refused"] is True and "local generator" in r.json()["detail"]


def test_slow_generator_times_out_without_blocking_others(llm_server: Server) -> None:
    h = llm_server.headers("carol")
    with ThreadPoolExecutor(2) as pool:
        slow = pool.submit(
            httpx.post, llm_server.url + "/v1/ask", json={"question": Q + " SLOWLY"}, headers=h, timeout=30
        )
        time.sleep(0.3)
        t0 = time.perf_counter()
        fast = httpx.post(llm_server.url + "/v1/ask", json={"question": Q}, headers=h, timeout=30)
        fast_s = time.perf_counter() - t0
        slow_r = slow.result()
    assert fast.status_code == 200 and fast_s < 4.0, fast_s
    assert slow_r.status_code == 504 and "request_timeout_s=5" in slow_r.json()["detail"]


def test_graceful_shutdown_writes_every_run(llm_server: Server) -> None:
    h = llm_server.headers("carol")
    run_ids = [
        httpx.post(llm_server.url + "/v1/ask", json={"question": Q}, headers=h, timeout=30).json()["run_id"]
        for _ in range(5)
    ]
    # uvicorn drains requests, runs the app's shutdown (pool, tracking flush), then re-raises SIGTERM
    assert stop(llm_server) in (0, -15)
    assert "Application shutdown complete" in llm_server.log.read_text()
    from ragconf.service import RagService
    from ragconf.tracking import get_run

    with RagService.from_overrides(llm_server.overrides) as svc:
        cfg = svc.tracking_config()
        for rid in run_ids:
            run = get_run(cfg, rid)
            assert run["kind"] == "ask" and run["status"] == "FINISHED"
            assert run["metrics"]["usage.completion_tokens"] == 6
