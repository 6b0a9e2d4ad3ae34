"""Authentication and authorisation through the real server: every bad credential is refused before anything
is retrieved (no policy decision is even made), bodies cannot pick a user or an override, admin endpoints need
the directory's admin role, /metrics needs the metrics or admin role (unless serve.metrics.auth=false), failed
authentications are limited per client address, and no key or token ends up in the audit log, MLflow or the
server log."""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from tests.server.conftest import AUDIENCE, ISSUER, JWT_SECRET, Server, audit_lines, client_from, start, stop

Q = {"question": "When should we fail over the primary database?"}


def token(sub: str = "alice", *, secret: str = JWT_SECRET, alg: str = "HS256", **claims: object) -> str:
    now = int(time.time())
    payload = {"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 300, **claims}
    return jwt.encode(payload, secret, algorithm=alg)


def unsigned(sub: str = "alice") -> str:
    """An `alg: none` token with otherwise valid claims."""
    now = int(time.time())
    return jwt.encode({"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "exp": now + 300}, None, algorithm="none")


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


# header factories: tokens are minted when the test runs (collection can happen minutes earlier)
REFUSED: list[tuple[str, Callable[[], dict[str, str]], int]] = [
    ("no credentials", lambda: {}, 401),
    ("wrong key", lambda: bearer("rk-not-a-key"), 401),
    ("empty bearer", lambda: {"Authorization": "Bearer"}, 401),
    ("basic auth", lambda: {"Authorization": "Basic YWxpY2U6eA=="}, 401),
    ("expired JWT", lambda: bearer(token(exp=int(time.time()) - 60)), 401),
    ("wrong audience", lambda: bearer(token(aud="someone-else")), 401),
    ("wrong issuer", lambda: bearer(token(iss="https://evil.test")), 401),
    ("wrong secret", lambda: bearer(token(secret="another-secret-0123456789abcdef0123456789")), 401),
    ("alg none", lambda: bearer(unsigned()), 401),
    ("JWT for an unknown user", lambda: bearer(token("mallory")), 403),
]


@pytest.mark.parametrize(("case", "headers", "status"), REFUSED, ids=[c[0] for c in REFUSED])
def test_bad_credentials_are_refused_before_retrieval(
    server: Server, case: str, headers: Callable[[], dict[str, str]], status: int
) -> None:
    before = audit_lines(server)
    for path in ("/v1/ask", "/v1/retrieve"):
        r = httpx.post(server.url + path, json=Q, headers=headers())
        assert r.status_code == status, (case, r.text)
        assert "documents" not in r.json() and "answer" not in r.json()
        if status == 401:
            assert r.headers["www-authenticate"] == "Bearer"
    assert audit_lines(server) == before, "a refused request reached the policy engine"


def test_key_of_a_user_absent_from_the_directory_is_403(server: Server) -> None:
    before = audit_lines(server)
    r = httpx.post(server.url + "/v1/ask", json=Q, headers=server.headers("ghost"))
    assert r.status_code == 403 and "ghost" in r.json()["detail"]
    assert audit_lines(server) == before


SETS_CONFIG = [
    {"user_id": "alice"},
    {"overrides": ["identity.users_dir=/tmp"]},
    {"policy": {"bundle": "/tmp"}},
    {"store": {"path": "/tmp/x.sqlite"}},
    {"pipeline": {"retriever": {"top_k": 500}}},
    {"principal": {"id": "alice", "groups": ["sre"]}},
]


@pytest.mark.parametrize("extra", [{"user": "alice"}, *SETS_CONFIG])
def test_body_cannot_set_identity_or_config(server: Server, extra: dict) -> None:
    before = audit_lines(server)
    r = httpx.post(server.url + "/v1/ask", json={**Q, **extra}, headers=server.headers("carol"))
    assert r.status_code == 422
    assert "requests cannot set it" in r.json()["detail"]
    assert audit_lines(server) == before


@pytest.mark.parametrize("extra", [*SETS_CONFIG, {"profile": "default"}, {"top_k": 5}])
def test_chat_body_cannot_set_identity_or_config(server: Server, extra: dict) -> None:
    """OpenAI's own fields are accepted (test_endpoints; `user` is only a label there); anything else is a 422.
    OpenAI's `store` is a boolean: an object under it is refused too."""
    before = audit_lines(server)
    chat = {"model": "ragconf", "messages": [{"role": "user", "content": Q["question"]}], **extra}
    r = httpx.post(server.url + "/v1/chat/completions", json=chat, headers=server.headers("carol"))
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and next(iter(extra)) in error["message"]
    assert audit_lines(server) == before


def test_valid_jwt_and_key_resolve_the_same_principal(server: Server) -> None:
    by_jwt = httpx.post(server.url + "/v1/retrieve", json=Q, headers=bearer(token("alice")))
    by_key = httpx.post(server.url + "/v1/retrieve", json=Q, headers={"X-API-Key": server.keys["alice"]})
    assert by_jwt.status_code == by_key.status_code == 200
    assert by_jwt.json()["user"] == by_key.json()["user"] == "alice"
    assert [d["chunk_id"] for d in by_jwt.json()["documents"]] == [d["chunk_id"] for d in by_key.json()["documents"]]
    assert "engineering/database-failover.md" in {d["doc_id"] for d in by_jwt.json()["documents"]}


def test_token_claims_do_not_override_the_directory_by_default(server: Server) -> None:
    """carol's token claims sre membership and confidential clearance; the directory (public, contractors) wins."""
    forged = token("carol", groups=["sre"], clearance="restricted", tenant="acme")
    r = httpx.post(server.url + "/v1/retrieve", json=Q, headers=bearer(forged))
    assert r.status_code == 200
    assert all(d["meta"].get("classification", "public") == "public" for d in r.json()["documents"])


def test_admin_endpoints_need_the_admin_role(server: Server) -> None:
    for user in ("alice", "carol"):
        for path in ("/v1/admin/reload", "/v1/admin/ingest"):
            r = httpx.post(server.url + path, headers=server.headers(user))
            assert r.status_code == 403 and "admin" in r.json()["detail"], (user, path)
    assert httpx.post(server.url + "/v1/admin/reload").status_code == 401


def test_admin_reload_is_atomic_and_a_broken_bundle_keeps_serving(server: Server) -> None:
    admin = server.headers("root")
    r = httpx.post(server.url + "/v1/admin/reload", headers=admin)
    assert r.status_code == 200, r.text
    revision = r.json()["revision"]
    access = server.work / "policies" / "ragconf" / "access" / "access.rego"
    good = access.read_text(encoding="utf-8")
    try:
        access.write_text(good + "\nthis is not rego {{{\n", encoding="utf-8")
        bad = httpx.post(server.url + "/v1/admin/reload", headers=admin)
        assert bad.status_code == 422 and bad.json()["reloaded"] is False
        assert "access.rego" in bad.json()["detail"] and bad.json()["revision"] == revision
        # the old policies keep serving
        ok = httpx.post(server.url + "/v1/ask", json=Q, headers=server.headers("alice"), timeout=30)
        assert ok.status_code == 200 and ok.json()["citations"]
    finally:
        access.write_text(good, encoding="utf-8")
    again = httpx.post(server.url + "/v1/admin/reload", headers=admin)
    assert again.status_code == 200 and again.json()["revision"] == revision


def _ingest_job(server: Server) -> dict[str, Any]:
    """Start an admin ingest (202 + job id) and poll its status until it is no longer running."""
    r = httpx.post(server.url + "/v1/admin/ingest", headers=server.headers("root"), timeout=30)
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] == "running" and r.headers["location"] == job["status_url"]
    deadline = time.monotonic() + 120
    while job["status"] == "running" and time.monotonic() < deadline:
        time.sleep(0.2)
        status = httpx.get(server.url + job["status_url"], headers=server.headers("root"), timeout=30)
        assert status.status_code == 200, status.text
        job = status.json()
    return job


def test_admin_ingest_is_an_incremental_background_job(server: Server) -> None:
    job = _ingest_job(server)
    assert job["status"] == "succeeded", job
    body = job["result"]
    assert body["added"] == 0 and body["updated"] == 0 and body["unchanged"] >= 12 and body["run_id"]
    assert job["user"] == "root" and job["finished"] and job["seconds"] >= 0
    # only admins read job status; unknown ids are 404
    h = server.headers("alice")
    assert httpx.get(server.url + job["status_url"], headers=h).status_code == 403
    missing = httpx.get(server.url + "/v1/admin/ingest/" + "0" * 32, headers=server.headers("root"))
    assert missing.status_code == 404 and "no ingest job" in missing.json()["detail"]
    bad = httpx.get(server.url + "/v1/admin/ingest/..%2Fkeys", headers=server.headers("root"))
    assert bad.status_code == 404


def test_admin_ingest_job_reports_why_it_failed(server: Server) -> None:
    """Another ingest holds the store's lock (a CLI ingest, another worker process): the job fails, says why."""
    (store,) = (server.work / "state").rglob("*.sqlite")
    fd = os.open(f"{store}.ingest.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        job = _ingest_job(server)
    finally:
        os.close(fd)
    assert job["status"] == "failed" and "another ingest" in job["error"], job
    assert _ingest_job(server)["status"] == "succeeded"


def test_metrics_need_the_metrics_or_admin_role(server: Server) -> None:
    """serve.metrics.auth defaults to true: an unauthenticated or wrongly authenticated scrape gets 401 and an
    ordinary user 403, never the metrics; the metrics role (a scraper with no groups) and admins get them."""
    with client_from("127.0.0.9", base_url=server.url) as scraper:
        for headers in ({}, bearer("rk-not-a-key"), {"X-API-Key": "rk-not-a-key"}):
            r = scraper.get("/metrics", headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", r.text
            assert "ragconf_" not in r.text and r.headers["content-type"] == "application/json"
    for user in ("carol", "alice"):
        r = httpx.get(server.url + "/metrics", headers=server.headers(user))
        assert r.status_code == 403 and "'metrics' or 'admin' role" in r.json()["detail"]
        assert "ragconf_" not in r.text
    for headers in (server.headers("prom"), server.headers("root"), bearer(token("prom"))):
        r = httpx.get(server.url + "/metrics", headers=headers)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        assert 'ragconf_denials_total{route="/metrics"}' in r.text


@pytest.fixture(scope="module")
def open_server(server: Server) -> Iterator[Server]:
    """A second server over the same ingested work dir: `/metrics` open (serve.metrics.auth=false) and a small
    failed-attempt budget (3 in 3 s, at most 2 tracked client addresses)."""
    srv = start(
        server.work,
        server.keys,
        [
            *server.overrides,
            "serve.metrics.auth=false",
            "serve.auth.failed_attempts.limit=3",
            "serve.auth.failed_attempts.window_s=3",
            "serve.auth.failed_attempts.max_clients=2",
        ],
    )
    try:
        yield srv
    finally:
        stop(srv)


def test_metrics_auth_false_keeps_the_open_scrape(open_server: Server) -> None:
    r = httpx.get(open_server.url + "/metrics")
    assert r.status_code == 200 and 'ragconf_requests_total{route="/readyz",status="200"}' in r.text
    assert httpx.get(open_server.url + "/metrics", headers=open_server.headers("carol")).status_code == 200


def test_failed_authentications_are_limited_per_client_address(server: Server) -> None:
    """The defaults (20 failures a minute per address): the 21st attempt of a guessing client is a 429 with
    Retry-After, and so is everything it sends next (its valid credentials too: nothing is checked), while other
    addresses keep their own budget. The lockout is logged with the address, never a key."""
    import openai

    guesses = [bearer(f"rk-guess-{i}") if i % 2 else bearer(token(secret="x" * 40)) for i in range(20)]
    with (
        client_from("127.0.0.2", base_url=server.url, timeout=30) as attacker,
        client_from("127.0.0.3", base_url=server.url, timeout=30) as other,
    ):
        for headers in guesses:
            assert attacker.post("/v1/retrieve", json=Q, headers=headers).status_code == 401
        r = attacker.post("/v1/retrieve", json=Q, headers=bearer("rk-guess-more"))
        assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 60, r.text
        assert "serve.auth.failed_attempts.limit=20" in r.json()["detail"] and "www-authenticate" not in r.headers
        before = audit_lines(server)
        for path, headers in (("/v1/retrieve", server.headers("alice")), ("/v1/ask", bearer(token("alice")))):
            blocked = attacker.post(path, json=Q, headers=headers)
            assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) >= 1
        assert attacker.get("/metrics", headers=server.headers("root")).status_code == 429
        sdk = openai.OpenAI(
            base_url=server.url + "/v1", api_key=server.keys["alice"], max_retries=0, http_client=attacker
        )
        with pytest.raises(openai.RateLimitError):
            sdk.chat.completions.create(model="ragconf", messages=[{"role": "user", "content": Q["question"]}])
        assert audit_lines(server) == before, "a blocked client reached the policy engine"
        # a readiness probe from that address still gets its answer (without the admin's details)
        assert attacker.get("/readyz", headers=server.headers("root")).json() == {"ready": True}
        # other addresses are unaffected: their failures are their own, their valid keys work
        assert other.post("/v1/retrieve", json=Q, headers=bearer("rk-guess-other")).status_code == 401
        assert other.post("/v1/retrieve", json=Q, headers=server.headers("carol")).status_code == 200
    assert httpx.post(server.url + "/v1/retrieve", json=Q, headers=server.headers("alice")).status_code == 200
    log = server.log.read_text(encoding="utf-8")
    assert "20 failed authentications from 127.0.0.2 within 60s" in log
    assert "rk-guess" not in log and "127.0.0.3 within" not in log


def test_failed_attempts_expire_and_memory_is_bounded(open_server: Server) -> None:
    """3 failures in 3 s block an address until the oldest is 3 s old; requests without credentials guess
    nothing and do not count; at most 2 addresses are tracked, the least recently failing is forgotten first."""
    url, valid = open_server.url, open_server.headers("carol")
    with client_from("127.0.0.4", base_url=url) as anonymous:
        for _ in range(5):
            assert anonymous.post("/v1/retrieve", json=Q).status_code == 401
        assert anonymous.post("/v1/retrieve", json=Q, headers=valid).status_code == 200
    with client_from("127.0.0.5", base_url=url) as a:
        for _ in range(3):
            assert a.post("/v1/retrieve", json=Q, headers=bearer("rk-guess")).status_code == 401
        r = a.post("/v1/retrieve", json=Q, headers=valid)
        assert r.status_code == 429 and int(r.headers["retry-after"]) in (1, 2, 3)
        time.sleep(int(r.headers["retry-after"]) + 0.2)
        assert a.post("/v1/retrieve", json=Q, headers=valid).status_code == 200
        for _ in range(3):
            assert a.post("/v1/retrieve", json=Q, headers=bearer("rk-guess")).status_code == 401
        assert a.post("/v1/retrieve", json=Q, headers=valid).status_code == 429
        for address in ("127.0.0.6", "127.0.0.7"):  # two more addresses fail: 127.0.0.5 is forgotten
            with client_from(address, base_url=url) as c:
                assert c.post("/v1/retrieve", json=Q, headers=bearer("rk-guess")).status_code == 401
        assert a.post("/v1/retrieve", json=Q, headers=valid).status_code == 200


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_secrets_never_reach_audit_mlflow_or_logs(server: Server) -> None:
    # make sure every kind of request has happened at least once, with key and JWT
    httpx.post(server.url + "/v1/ask", json=Q, headers=server.headers("bob"), timeout=30)
    httpx.post(server.url + "/v1/ask", json=Q, headers=bearer(token("bob")), timeout=30)
    httpx.post(server.url + "/v1/ask", json=Q, headers=bearer("rk-wrong-key-value"))
    from ragconf.tracking import flush

    flush()
    time.sleep(1.0)  # the server's background writer
    secrets = [*server.secrets(), token("bob")[:40], "rk-wrong-key-value"]
    state = server.work / "state"
    checked = 0
    for path in [*_files(state), server.log]:
        blob = path.read_bytes()
        checked += 1
        for secret in secrets:
            assert secret.encode() not in blob, f"secret found in {path}"
    assert checked >= 3 and (state / "audit.jsonl").is_file() and (state / "mlflow.db").is_file()
    shutil.rmtree(server.work / "unused", ignore_errors=True)
