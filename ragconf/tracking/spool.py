"""The CLI's run spool: a tracked ``ask``/``retrieve`` in a short-lived CLI process is written as one JSON file
(0600) to ``<workdir>/spool/`` and logged to MLflow by a detached, niced writer process
(``python -m ragconf.tracking.spool <workdir>``), or by the next command that opens the store (``runs ...``,
``eval``, feedback), whichever comes first. So a CLI ask never imports mlflow nor waits for its store.

Each file is claimed by an atomic rename before it is written, so a writer process and a command draining the
spool never log a run twice; a claim whose process died is taken over.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

__all__ = ["drain", "spool_dir", "spool_run", "start_writer"]

SUFFIX = ".json"
CLAIM = ".claimed-"


def spool_dir(workdir: str | Path) -> Path:
    return Path(workdir) / "spool"


def spool_run(workdir: Path, job: dict[str, Any]) -> Path:
    """Write one run (``job``: tracking settings, kind, config, overrides, ops...) to the spool, 0600."""
    from ragconf._fs import private_dir, private_umask, private_workdir

    private_workdir(workdir)
    folder = private_dir(spool_dir(workdir))
    name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
    tmp = folder / f".{name}.tmp"
    with private_umask():
        tmp.write_text(json.dumps(job, default=str), encoding="utf-8")
    os.chmod(tmp, 0o600)
    final = folder / f"{name}{SUFFIX}"
    tmp.rename(final)
    return final


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first), or None without /proc."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _claim_tag() -> str:
    """What a claim by this process is suffixed with: its pid and, where /proc exists, its start time, so a
    claim is not mistaken for a live one after its process died and the pid was given to another process."""
    stat = _proc_stat(os.getpid())
    return f"{os.getpid()}-{stat[19]}" if stat and len(stat) > 19 else str(os.getpid())


def _claimant_alive(tag: str) -> bool:
    """Whether the process that made a claim tagged ``tag`` (``<pid>[-<start time>]``) still runs."""
    pid, _, started = tag.partition("-")
    if not pid.isdigit() or not _alive(int(pid)):
        return False
    stat = _proc_stat(int(pid))
    if stat is None:  # no /proc (macOS): trust the pid; else it exited meanwhile
        return not Path("/proc/self/stat").exists()
    if stat[0] in ("Z", "X"):  # exited, not yet reaped by its parent
        return False
    return not started or (len(stat) > 19 and stat[19] == started)


def _claim(folder: Path) -> Path | None:
    """Take the oldest pending file (or one whose claiming process died)."""
    for path in sorted(folder.iterdir()):
        name = path.name
        if name.startswith("."):
            continue
        if CLAIM in name:
            if _claimant_alive(name.rsplit(CLAIM, 1)[1]):
                continue
            base = name.split(CLAIM, 1)[0]
        elif name.endswith(SUFFIX):
            base = name
        else:
            continue
        target = folder / f"{base}{CLAIM}{_claim_tag()}"
        try:
            path.rename(target)
        except FileNotFoundError:  # another writer was faster
            continue
        return target
    return None


def _in_flight(folder: Path) -> set[str]:
    """Names of the runs another live process claimed from ``folder`` and is still writing."""
    out = set()
    mine = _claim_tag()
    for path in folder.iterdir():
        tag = path.name.rsplit(CLAIM, 1)[1] if CLAIM in path.name else ""
        if tag and tag != mine and _claimant_alive(tag):
            out.add(path.name)
    return out


def drain(workdir: str | Path, *, limit_s: float | None = None, wait_s: float = 0.0) -> int:
    """Log every spooled run of ``workdir`` to MLflow (in this process). Returns how many were written.

    ``wait_s``: then wait up to that long for runs another process (the writer) claimed and is still writing,
    so a reader that drains first (``runs ...``, ``eval``, feedback) sees every run the CLI spooled, whole."""
    from ragconf.tracking.mlflow_tracker import Tracker, write_job

    folder = spool_dir(workdir)
    if not folder.is_dir():
        return 0
    trackers: dict[tuple[str, str], Tracker] = {}
    done = 0
    deadline = None if limit_s is None else time.monotonic() + limit_s
    while deadline is None or time.monotonic() < deadline:
        path = _claim(folder)
        if path is None:
            break
        tracker = None
        try:
            job = json.loads(path.read_text(encoding="utf-8"))
            cfg = job["tracking"]
            key = (str(cfg.get("uri")), str(cfg.get("experiment")))
            tracker = trackers.get(key)
            if tracker is None:
                tracker = trackers[key] = Tracker(cfg, workdir=Path(job["workdir"]))
            write_job(tracker, job)
            path.unlink()
            done += 1
        except Exception as exc:
            if tracker is not None and tracker._dead:  # the store, not this run: keep it (and the rest) for later
                with contextlib.suppress(OSError):
                    path.rename(path.with_name(path.name.split(CLAIM, 1)[0]))
                _log(folder, f"{path.name.split(CLAIM, 1)[0]}: kept in the spool, the store is unavailable: {exc}")
                break
            # keep the run for a look, never loop on it
            failed = path.with_name(path.name.split(CLAIM, 1)[0] + ".failed")
            with contextlib.suppress(OSError):
                path.rename(failed)
            _log(folder, f"{failed.name}: {type(exc).__name__}: {exc}")
    # only the runs being written now (a busy writer claims the next one when it is done with these)
    waiting = _in_flight(folder) if wait_s > 0 else set()
    until = time.monotonic() + wait_s
    while waiting and time.monotonic() < until:
        time.sleep(0.05)
        waiting &= _in_flight(folder)
    return done


def _log(folder: Path, line: str) -> None:
    from ragconf._fs import private_umask

    with contextlib.suppress(OSError), private_umask(), (folder / "writer.log").open("a", encoding="utf-8") as fh:
        fh.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}\n")


#: A pid file without a pid (a starter between creating it and writing the child's pid) older than this is
#: left over from a starter that died.
STARTING_S = 30.0


def start_writer(workdir: Path) -> None:
    """Start the detached writer process unless one is running or starting for this spool
    (``RAGCONF_SPOOL_WRITER=0``: never; the next command that opens the store writes the runs).

    ``spool/writer.pid`` is created exclusively (``O_EXCL``) by the one starter that wins, before the child
    exists, and holds the child's pid: many runs spooled at once (a busy server, parallel CLI asks) start one
    writer, not one each while the first is still importing. A pid file naming a dead process (or empty
    for longer than ``STARTING_S``) is stale and replaced."""
    if os.environ.get("RAGCONF_SPOOL_WRITER", "1") == "0":
        return
    pidfile = spool_dir(workdir) / "writer.pid"
    for _ in range(2):
        try:
            fd = os.open(pidfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            if not _stale(pidfile):
                return
            with contextlib.suppress(OSError):
                pidfile.unlink()
            continue
        except OSError:
            return
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "ragconf.tracking.spool", str(Path(workdir).resolve())],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                close_fds=True,
            )
            os.write(fd, str(proc.pid).encode())
        except OSError:
            with contextlib.suppress(OSError):
                pidfile.unlink()
        finally:
            os.close(fd)
        return


def _stale(pidfile: Path) -> bool:
    try:
        text = pidfile.read_text().strip()
        age = time.time() - pidfile.stat().st_mtime
    except OSError:
        return True  # gone meanwhile: create it
    if text.isdigit():
        return not _writer_alive(int(text), starting=age <= STARTING_S)
    return age > STARTING_S


def _writer_alive(pid: int, *, starting: bool = False) -> bool:
    """Whether ``pid`` is a running spool writer. A live pid alone is not enough: a writer killed (OOM, kill -9)
    is a zombie until its parent (the server that started it) reaps it, and a pid file left in a workdir volume
    by a container that restarted names whatever process got that pid since; either would keep a writer from
    ever starting again. Where /proc exists the process must be running (not a zombie) the spool module.
    ``starting``: the pid file is recent, so an empty command line is a writer still in ``exec`` (Popen returns
    before the kernel has set up the new command line)."""
    if not _alive(pid):
        return False
    if not Path("/proc/self/cmdline").exists():  # no /proc (macOS): trust the pid
        return True
    stat = _proc_stat(pid)
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False  # gone meanwhile
    if not stat or stat[0] in ("Z", "X"):
        return False
    return b"ragconf.tracking.spool" in argv or (starting and not any(argv))


def _main(workdir: str) -> int:
    with contextlib.suppress(OSError):
        os.nice(10)  # the user's next command comes first
    folder = spool_dir(workdir)
    pidfile = folder / "writer.pid"
    me = str(os.getpid())
    from ragconf._fs import private_umask

    with contextlib.suppress(OSError), private_umask():  # started by hand, or the starter's file went stale
        try:
            current = pidfile.read_text().strip()
        except FileNotFoundError:
            current = ""
        if current != me:
            pidfile.write_text(me)
    try:
        while drain(workdir):
            pass
    finally:
        with contextlib.suppress(OSError):
            if pidfile.read_text().strip() == me:  # not a successor's
                pidfile.unlink()
    drain(workdir)  # a run spooled while the pid file was going away
    return 0


if __name__ == "__main__":  # pragma: no cover - the writer process
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")
    sys.exit(_main(sys.argv[1]))
