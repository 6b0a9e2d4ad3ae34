"""`ragconf serve --workers 2`: two processes, each its own app, behind one port; they share the SQLite store,
the audit log and the local MLflow store. And the per-user rate limit (`serve.rate_limit_per_minute`)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import run_cli
from tests.server.conftest import Server, make_world, start, stop

LIMIT = 4


@pytest.fixture(scope="module")
def workers_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    work = tmp_path_factory.mktemp("serve-workers")
    keys, overrides = make_world(work)
    run_cli("ingest", *overrides, cwd=work, check=True)
    srv = start(work, keys, [*overrides, f"serve.rate_limit_per_minute={LIMIT}"], args=("--workers", "2"))
    try:
        yield srv
    finally:
        stop(srv)


def _workers(pid: int) -> list[int]:
    """Child processes that are uvicorn workers (multiprocessing spawn), not its resource tracker."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    kids = [int(p) for p in path.read_text().split()] if path.is_file() else []
    cmd = {k: Path(f"/proc/{k}/cmdline").read_bytes() for k in kids}
    return [k for k in kids if b"spawn_main" in cmd[k] and b"resource_tracker" not in cmd[k]]


def test_rate_limit_per_user_and_process(workers_server: Server) -> None:
    h = workers_server.headers("root")
    codes = []
    for _ in range(3 * LIMIT):
        r = httpx.post(workers_server.url + "/v1/retrieve", json={"question": "office hours"}, headers=h, timeout=30)
        codes.append(r.status_code)
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1
            assert "serve.rate_limit_per_minute=4" in r.json()["detail"]
    # each of the two processes lets LIMIT requests of this user through, then answers 429
    assert LIMIT <= codes.count(200) <= 2 * LIMIT and codes.count(429) == len(codes) - codes.count(200), codes
    # other users have their own budget
    other = httpx.post(
        workers_server.url + "/v1/retrieve",
        json={"question": "office hours"},
        headers=workers_server.headers("gina"),
        timeout=30,
    )
    assert other.status_code == 200


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs /proc")
def test_two_workers_share_store_audit_log_and_tracking(workers_server: Server) -> None:
    assert len(_workers(workers_server.proc.pid)) == 2, "expected two worker processes"
    users = ["alice", "bob", "carol"] * LIMIT

    def ask(user: str) -> tuple[str, httpx.Response]:
        body = {"question": "When should we fail over the primary database?"}
        h = workers_server.headers(user)
        return user, httpx.post(workers_server.url + "/v1/ask", json=body, headers=h, timeout=60)

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(ask, users))
    run_ids = []
    for user, r in results:
        assert r.status_code == 200, r.text
        assert r.json()["user"] == user and r.json()["run_id"]
        run_ids.append(r.json()["run_id"])
    assert stop(workers_server) in (0, -15)
    from ragconf.service import RagService
    from ragconf.tracking import get_run

    audit = (workers_server.work / "state" / "audit.jsonl").read_text(encoding="utf-8")
    with RagService.from_overrides(workers_server.overrides) as svc:
        cfg = svc.tracking_config()
        for (user, _), rid in zip(results, run_ids, strict=True):
            run = get_run(cfg, rid)
            assert run["kind"] == "ask" and run["status"] == "FINISHED" and run["tags"]["ragconf.user"] == user
            assert rid in audit
