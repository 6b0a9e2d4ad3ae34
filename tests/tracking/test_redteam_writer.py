"""Red team: the spool writer process of `tracking.ask_writer=process` (a server's runs) must be started again
whenever none is running for the spool, or the runs stay in the spool for ever (docs/tracking.md: "no run is
lost"; docs/serving.md: "one writer process logs them"). A pid file left by a writer that died must not keep
a new one from starting, whatever that pid names now: a zombie (the server, the writer's parent, has not
reaped it) or an unrelated live process (pid reuse: a container restarted with the same pids).
Real writer processes, a real MLflow SQLite store."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from ragconf.tracking import spool
from ragconf.tracking.mlflow_tracker import Tracker, flush

WAIT_S = 120.0


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("RAGCONF_SPOOL_WRITER", raising=False)
    Tracker({}, workdir=tmp_path).client()  # the store exists before any writer opens it
    spool.spool_dir(tmp_path).mkdir(mode=0o700, exist_ok=True)
    return tmp_path


def _ask_run(workdir: Path) -> str:
    """One background ask run as a server logs it (`writer=process`); returns its run key."""
    tracker = Tracker({}, workdir=workdir, writer="process")
    with tracker.start_run("ask", config={"project": {"name": "rt"}}, overrides=[], config_hash="rt-hash") as run:
        run.log_metrics({"latency_ms": 1.0})
    assert flush(60)
    assert run.run_id is not None
    return run.run_id


def _logged(workdir: Path, key: str, wait_s: float = WAIT_S) -> list[Any]:
    """The MLflow runs tagged with run key ``key``, waiting up to ``wait_s`` for the writer process (this
    process only reads the store: it never drains the spool itself)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir.resolve() / 'mlflow.db'}")
    deadline = time.monotonic() + wait_s
    while True:
        exps = [e.experiment_id for e in client.search_experiments()]
        found = client.search_runs(exps, f"tags.`ragconf.run_key` = '{key}'") if exps else []
        if found or time.monotonic() > deadline:
            return list(found)
        time.sleep(0.5)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to see a zombie")
def test_a_killed_writer_left_as_a_zombie_does_not_stop_the_next_runs(workdir: Path) -> None:
    """The server starts the writer (it is its parent and never waits for it); the writer is killed (OOM
    killer, `kill -9`) and stays a zombie until the server reaps it. The next run must still be written."""
    spool.start_writer(workdir)
    pidfile = spool.spool_dir(workdir) / "writer.pid"
    pid = int(pidfile.read_text())
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while _state(pid) != "Z" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _state(pid) == "Z", "the killed writer should be an unreaped child of this process"
    assert pidfile.read_text() == str(pid)  # it never got to remove its pid file

    key = _ask_run(workdir)
    assert len(_logged(workdir, key)) == 1, "the run stayed in the spool: no writer was started"


def test_a_pid_file_naming_a_live_unrelated_process_does_not_stop_the_writer(workdir: Path) -> None:
    """A writer killed with its container leaves its pid file in the workdir volume; after the restart that pid
    names another live process (here: this one, like a server that got the old writer's pid)."""
    pidfile = spool.spool_dir(workdir) / "writer.pid"
    pidfile.write_text(str(os.getpid()))
    key = _ask_run(workdir)
    assert len(_logged(workdir, key)) == 1, "the run stayed in the spool: no writer was started"


def _writer_done(workdir: Path, wait_s: float = WAIT_S) -> None:
    """Wait until no writer process is running or starting for the spool, and none holds a claim."""
    folder = spool.spool_dir(workdir)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        busy = (folder / "writer.pid").exists() or any(spool.CLAIM in p.name for p in folder.iterdir())
        if not busy:
            return
        time.sleep(0.2)
    raise AssertionError(f"the writer is still busy after {wait_s} s: {sorted(p.name for p in folder.iterdir())}")


def test_runs_spooled_while_the_store_is_unavailable_are_written_once_it_is_back(workdir: Path) -> None:
    """The tracking store is unavailable for a while (here: another process holds SQLite's write lock longer
    than MLflow waits; likewise an MLflow server restarting) while a server's runs wait in the spool. Once
    the store is back, a command that reads runs drains the spool first (docs/tracking.md) and must show
    every one of them: a run the writer could not log then is kept, not given up for good (`*.failed` is for a
    run that itself cannot be written)."""
    import sqlite3

    from ragconf.tracking.mlflow_tracker import flush_spool

    db = sqlite3.connect(str(workdir / "mlflow.db"), timeout=0, isolation_level=None)
    db.execute("BEGIN EXCLUSIVE")  # readers and writers of the store wait, then fail ("database is locked")
    try:
        keys = [_ask_run(workdir) for _ in range(3)]
        _writer_done(workdir)
    finally:
        db.execute("ROLLBACK")
        db.close()
    reader = Tracker({}, workdir=workdir)
    flush_spool(reader)  # what `ragconf runs list` / feedback do before reading
    missing = [k for k in keys if len(_logged(workdir, k, wait_s=0)) != 1]
    folder = spool.spool_dir(workdir)
    assert not missing, (
        f"{len(missing)} of 3 runs lost: {sorted(p.name for p in folder.iterdir())}; "
        f"{(folder / 'writer.log').read_text() if (folder / 'writer.log').exists() else ''}"
    )


def test_a_run_that_itself_cannot_be_written_is_set_aside_and_the_next_ones_are_written(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keeping runs while the store is down must not let one bad run block the spool: it is kept as
    `*.failed` with its reason in writer.log and the runs after it are written."""
    folder = spool.spool_dir(workdir)
    (folder / "00000000000000000001-deadbeef.json").write_text("{not json")
    monkeypatch.setenv("RAGCONF_SPOOL_WRITER", "0")  # this test drains in-process
    key = _ask_run(workdir)
    assert spool.drain(workdir) == 1
    assert (folder / "00000000000000000001-deadbeef.json.failed").exists()
    assert "deadbeef" in (folder / "writer.log").read_text()
    assert len(_logged(workdir, key, wait_s=0)) == 1


def test_a_claim_whose_pid_now_names_another_process_is_taken_over(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process claimed a run and died before writing it (a writer killed with its container); its pid now
    names another live process (pid reuse after the restart, a thread of the new server). The claim is a dead
    process's (docs/tracking.md: "a claim whose process died is taken over"): a reader writes the run, at
    once, instead of waiting for it and leaving it in the spool for ever."""
    import subprocess
    import sys

    from ragconf.tracking.mlflow_tracker import flush_spool

    monkeypatch.setenv("RAGCONF_SPOOL_WRITER", "0")
    key = _ask_run(workdir)
    folder = spool.spool_dir(workdir)
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from ragconf.tracking import spool; print(spool._claim(spool.spool_dir(sys.argv[1])))",
            str(workdir),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    claimed = Path(child.stdout.strip())
    assert claimed.exists() and spool.CLAIM in claimed.name
    other = subprocess.Popen(["sleep", "300"])
    try:
        head, tag = claimed.name.rsplit(spool.CLAIM, 1)
        digits = len(tag) - len(tag.lstrip("0123456789"))
        reused = claimed.with_name(f"{head}{spool.CLAIM}{other.pid}{tag[digits:]}")  # the same pid, now `sleep`
        claimed.rename(reused)
        start = time.monotonic()
        flush_spool(Tracker({}, workdir=workdir))
        elapsed = time.monotonic() - start
    finally:
        other.kill()
        other.wait()
    assert len(_logged(workdir, key, wait_s=0)) == 1, sorted(p.name for p in folder.iterdir())
    assert elapsed < 30
