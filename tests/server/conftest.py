"""A real `ragconf serve` (uvicorn, subprocess) on 127.0.0.1 over the handbook example, ingested once.

Users: the handbook personas plus `root` (admin role), `prom` (the metrics role: a Prometheus scraper) and
`ghost` (holds a valid key, absent from the directory). Auth: API keys from a YAML file of sha256 digests, and
HS256 JWTs (secret in an env variable). Every client connects from 127.0.0.1 unless a test binds another
loopback address (`client_from`): the failed-authentication limit counts per client address."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, run_cli

JWT_SECRET = "test-secret-0123456789abcdef0123456789abcdef"
ISSUER = "https://idp.test"
AUDIENCE = "ragconf"
USERS = ("alice", "bob", "carol", "gina", "root", "prom", "ghost")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    work: Path
    keys: dict[str, str]
    overrides: list[str]
    proc: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str] = field(default_factory=dict)

    def headers(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[user]}"}

    def secrets(self) -> list[str]:
        return [*self.keys.values(), JWT_SECRET]


def make_world(work: Path) -> tuple[dict[str, str], list[str]]:
    """Users, a copy of the policy bundle, an API key file; the overrides that point at them."""
    users = work / "users"
    shutil.copytree(ROOT / "examples" / "handbook" / "users", users)
    (users / "root.yaml").write_text(
        "groups: [employees]\ntenant: acme\nclearance: internal\nattributes: {roles: [admin]}\n", encoding="utf-8"
    )
    (users / "prom.yaml").write_text("groups: []\ntenant: acme\nattributes: {roles: [metrics]}\n", encoding="utf-8")
    shutil.copytree(ROOT / "policies", work / "policies")
    keys = {u: f"rk-{u}-{hashlib.sha256(u.encode()).hexdigest()[:24]}" for u in USERS}
    lines = [
        f"- {{sha256: {hashlib.sha256(k.encode()).hexdigest()}, user: {u}, name: {u}-key}}" for u, k in keys.items()
    ]
    (work / "keys.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    overrides = [
        f"project.workdir={work / 'state'}",
        f"identity.users_dir={users}",
        f"policy.bundle={work / 'policies'}",
        f"serve.auth.api_keys_file={work / 'keys.yaml'}",
        "serve.auth.jwt.secret_env=RAGCONF_TEST_JWT_SECRET",
        f"serve.auth.jwt.issuer={ISSUER}",
        f"serve.auth.jwt.audience={AUDIENCE}",
        "serve.max_body_bytes=20000",
        "serve.max_question_chars=500",
        "serve.max_top_k=50",
    ]
    return keys, overrides


def start(
    work: Path,
    keys: dict[str, str],
    overrides: list[str],
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
) -> Server:
    port = free_port()
    log = work / f"server-{port}.log"
    full_env = {**os.environ, "RAGCONF_TEST_JWT_SECRET": JWT_SECRET, "NO_PROXY": "127.0.0.1", **(env or {})}
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ragconf", "serve", *overrides, "--port", str(port), *args],
            cwd=work,
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=full_env,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return Server(url, work, keys, overrides, proc, log, env or {})
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"server not ready after 90 s:\n{log.read_text()}")


def stop(server: Server, timeout: float = 60) -> int:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()
    return int(server.proc.returncode)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    work = tmp_path_factory.mktemp("serve")
    keys, overrides = make_world(work)
    run_cli("ingest", *overrides, cwd=work, check=True)
    srv = start(work, keys, overrides)
    try:
        yield srv
    finally:
        stop(srv)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failing server test shows the end of the server's log and whether the server still runs."""
    outcome = yield
    report = outcome.get_result()
    srv = getattr(item, "funcargs", {}).get("server")
    if report.failed and isinstance(srv, Server) and srv.log.is_file():
        state = "running" if srv.proc.poll() is None else f"exited {srv.proc.returncode}"
        tail = srv.log.read_text(encoding="utf-8", errors="replace").splitlines()[-60:]
        report.sections.append((f"server log ({state}), last lines", "\n".join(tail)))


def client_from(address: str, **kwargs: Any) -> httpx.Client:
    """An httpx client whose connections come from ``address`` (any 127.x.y.z on Linux): another client
    address for the server."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), **kwargs)


def audit_lines(server: Server) -> int:
    path = server.work / "state" / "audit.jsonl"
    return len(path.read_text(encoding="utf-8").splitlines()) if path.is_file() else 0
