"""The spool's writer process: many runs spooled at once start one writer, a stale pid file is replaced, and
a writer never removes its successor's pid file (real processes)."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from ragconf.tracking import spool


def _count_spawns(monkeypatch: pytest.MonkeyPatch) -> list[subprocess.Popen[Any]]:
    spawned: list[subprocess.Popen[Any]] = []
    real = subprocess.Popen

    def popen(*args: Any, **kwargs: Any) -> subprocess.Popen[Any]:
        proc = real(*args, **kwargs)
        spawned.append(proc)
        return proc

    monkeypatch.setattr(spool.subprocess, "Popen", popen)
    return spawned


def _wait_gone(pidfile: Path, procs: list[subprocess.Popen[Any]]) -> None:
    for proc in procs:
        proc.wait(60)
    deadline = time.monotonic() + 30
    while pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def test_runs_spooled_at_once_start_one_writer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAGCONF_SPOOL_WRITER", raising=False)
    spawned = _count_spawns(monkeypatch)
    spool.spool_dir(tmp_path).mkdir(mode=0o700)
    barrier = threading.Barrier(24)

    def burst() -> None:
        barrier.wait()
        for _ in range(5):
            spool.start_writer(tmp_path)

    threads = [threading.Thread(target=burst) for _ in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(spawned) == 1  # 120 calls, one writer
    pidfile = spool.spool_dir(tmp_path) / "writer.pid"
    _wait_gone(pidfile, spawned)  # the writer found nothing to write and left, removing its own pid file
    assert not pidfile.exists()
    spool.start_writer(tmp_path)  # the next run starts a new one
    assert len(spawned) == 2
    _wait_gone(pidfile, spawned)


def test_a_stale_pid_file_is_replaced_and_a_fresh_empty_one_is_respected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RAGCONF_SPOOL_WRITER", raising=False)
    dead = subprocess.Popen(["true"])
    dead.wait()
    spawned = _count_spawns(monkeypatch)
    folder = spool.spool_dir(tmp_path)
    folder.mkdir(mode=0o700)
    pidfile = folder / "writer.pid"
    pidfile.write_text(str(dead.pid))  # a writer that died without cleaning up
    spool.start_writer(tmp_path)
    assert len(spawned) == 1
    _wait_gone(pidfile, spawned)
    pidfile.write_text("")  # a starter between creating the file and writing the pid
    spool.start_writer(tmp_path)
    assert len(spawned) == 1
    old = time.time() - spool.STARTING_S - 5  # ... or one that died there
    os.utime(pidfile, (old, old))
    spool.start_writer(tmp_path)
    assert len(spawned) == 2
    _wait_gone(pidfile, spawned)


def test_a_writer_leaves_a_successors_pid_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = spool.spool_dir(tmp_path)
    folder.mkdir(mode=0o700)
    pidfile = folder / "writer.pid"
    monkeypatch.setattr(spool, "drain", lambda *a, **k: pidfile.write_text("999999999") and 0)
    spool._main(str(tmp_path))  # took over, then a successor wrote its pid while this one was finishing
    assert pidfile.read_text() == "999999999"
