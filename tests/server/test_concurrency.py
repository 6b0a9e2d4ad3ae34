"""Interleaved concurrent asks from users with different rights never mix documents, citations or runs, and
every persona's answers through HTTP hold only documents the policy oracle (written independently of the
Rego) says that persona may see; canary tokens reach only authorised users."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import socket
import time

import httpx
import yaml

from tests.policy.test_engine import visible
from tests.server.conftest import Server

PERSONAS = ("alice", "bob", "carol", "gina")
QUESTIONS = [
    "When should we fail over the primary database?",
    "What is the failover token?",
    "What is the compensation review code name for the salary bands?",
    "What is the code word for the expense fraud investigation case?",
    "What is the Globex welcome code?",
    "What is the meal allowance?",
    "How do I connect to the office wifi?",
    "What are the office hours?",
]
CANARIES = {"KESTREL-4412": {"alice"}, "ZEBRA-7731": {"bob"}, "OSPREY-9058": set(), "HERON-2290": {"gina"}}


def principals(server: Server) -> dict[str, dict]:
    out = {}
    for user in PERSONAS:
        data = yaml.safe_load((server.work / "users" / f"{user}.yaml").read_text(encoding="utf-8"))
        out[user] = {"id": user, **data}
    return out


def test_interleaved_concurrent_asks_never_mix(server: Server) -> None:
    rng = random.Random(11)
    pairs = [(u, q) for u, q in itertools.product(PERSONAS, QUESTIONS)] * 8  # 256 requests: 200 asks
    jobs = [(u, q, "/v1/ask" if i < 200 else "/v1/retrieve") for i, (u, q) in enumerate(pairs)]
    rng.shuffle(jobs)
    who = principals(server)

    async def run() -> list[tuple[str, str, httpx.Response]]:
        limits = httpx.Limits(max_connections=16)
        async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as client:
            sem = asyncio.Semaphore(16)

            async def one(user: str, question: str, path: str) -> tuple[str, str, httpx.Response]:
                async with sem:
                    r = await client.post(path, json={"question": question}, headers=server.headers(user))
                    return user, path, r

            return await asyncio.gather(*(one(u, q, p) for u, q, p in jobs))

    results = asyncio.run(run())
    run_ids = []
    for user, path, r in results:
        assert r.status_code == 200, (user, path, r.text)
        body = r.json()
        assert body["user"] == user
        for d in body["documents"]:
            assert visible(who[user], d["meta"]), (user, d["doc_id"])
        blob = json.dumps(body)
        for canary, allowed in CANARIES.items():
            if user not in allowed:
                assert canary not in blob, (canary, user)
        if path == "/v1/ask":
            assert {c["chunk_id"] for c in body["citations"]} <= {d["chunk_id"] for d in body["documents"]}
        run_ids.append(body["run_id"])
    assert len(results) == 256 and sum(p == "/v1/ask" for _, p, _ in results) == 200
    assert len(set(run_ids)) == len(run_ids) and all(run_ids)


def test_every_persona_reads_its_canary_through_http(server: Server) -> None:
    """The positive side of the leakage check: authorised users do get their restricted answers."""
    r = httpx.post(
        server.url + "/v1/ask",
        json={"question": "What is the failover token?"},
        headers=server.headers("alice"),
        timeout=30,
    )
    assert "KESTREL-4412" in json.dumps(r.json()["documents"])


def test_an_idle_keep_alive_connection_outlives_client_pool_expiry(server: Server) -> None:
    """Client pools (httpx, the openai SDK) reuse a connection idle for up to 5 s; a server that closes it at
    the same moment races them into a reset (uvicorn's default is 5 s). After 6 s idle the same socket still
    answers."""
    host, port = server.url.removeprefix("http://").split(":")
    request = f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()

    def response(sock: socket.socket) -> bytes:
        """One whole response (headers, then Content-Length bytes of body), however TCP splits it."""
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, ("connection closed", data[:200])
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(
            int(v) for k, _, v in (h.partition(b":") for h in head.split(b"\r\n")) if k.lower() == b"content-length"
        )
        while len(body) < length:
            chunk = sock.recv(65536)
            assert chunk, ("connection closed", data[:200])
            body += chunk
        assert len(body) == length, "more than one response"
        return head

    with socket.create_connection((host, int(port)), timeout=10) as sock:
        for attempt in range(2):
            sock.sendall(request)
            head = response(sock)
            assert head.startswith(b"HTTP/1.1 200"), (attempt, head[:200])
            if attempt == 0:
                time.sleep(6)
