"""Audit log: one JSON line per policy decision, private (file 0600, folder 0700), rotated by size.

Every line carries the ``run_id`` of the run it belongs to when the caller set one: the service layer calls
``set_run_id(run.run_id)`` (or ``with run_context(run_id):``) around the work of a tracked run; the value lives
in a context variable, so concurrent requests in threads or asyncio tasks keep their own.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import threading
from collections.abc import Iterable, Iterator
from contextvars import ContextVar, Token
from pathlib import Path
from typing import Any

__all__ = [
    "AuditLog",
    "audit_files",
    "current_run_id",
    "query_audit",
    "read_audit",
    "reset_run_id",
    "run_context",
    "set_run_id",
]

#: The run the current decisions belong to (None: not part of a tracked run).
current_run_id: ContextVar[str | None] = ContextVar("ragconf_audit_run_id", default=None)


def set_run_id(run_id: str | None) -> Token[str | None]:
    """Record ``run_id`` on every audit line written from this context on; returns the token for
    :func:`reset_run_id`."""
    return current_run_id.set(str(run_id) if run_id else None)


def reset_run_id(token: Token[str | None]) -> None:
    current_run_id.reset(token)


@contextlib.contextmanager
def run_context(run_id: str | None) -> Iterator[None]:
    """``with run_context(run.run_id): ...``: audit lines written inside carry the run id."""
    token = set_run_id(run_id)
    try:
        yield
    finally:
        reset_run_id(token)


def _private_dirs(folder: Path) -> None:
    """Create ``folder`` and its missing parents as 0700 (existing folders are left as they are)."""
    missing = []
    cur = folder
    while not cur.exists() and cur != cur.parent:
        missing.append(cur)
        cur = cur.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir(mode=0o700)
            os.chmod(d, 0o700)


class AuditLog:
    """Appends decisions to a JSON-lines file (``path=None``: keep nothing, e.g. `policy.audit.sink: none`).

    ``max_bytes > 0`` rotates: when a line would take the file past it, ``audit.jsonl`` becomes
    ``audit.jsonl.1`` (``.1`` -> ``.2`` ..., at most ``keep`` rotated files). Rotation holds an exclusive
    ``flock`` on ``<path>.lock`` so several processes can share one log."""

    def __init__(self, path: str | Path | None, *, max_bytes: int = 0, keep: int = 5) -> None:
        self.path = Path(path) if path else None
        self.max_bytes = int(max_bytes or 0)
        self.keep = max(1, int(keep))
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._ino: int | None = None
        if self.path is not None:
            _private_dirs(self.path.parent)

    def _open(self) -> None:
        assert self.path is not None
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        st = os.fstat(fd)
        if stat.S_IMODE(st.st_mode) & 0o077 and st.st_uid == os.getuid():
            os.fchmod(fd, 0o600)  # an older, world-readable log of ours
        self._fd, self._ino = fd, st.st_ino

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = self._ino = None

    def _current(self) -> bool:
        """Whether our descriptor still is ``path`` (another process may have rotated it)."""
        assert self.path is not None
        try:
            return self._fd is not None and os.stat(self.path).st_ino == self._ino
        except FileNotFoundError:
            return False

    def _rotate(self) -> None:
        assert self.path is not None
        self._close()
        oldest = Path(f"{self.path}.{self.keep}")
        with contextlib.suppress(FileNotFoundError):
            oldest.unlink()
        for i in range(self.keep - 1, 0, -1):
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{self.path}.{i}", f"{self.path}.{i + 1}")
        with contextlib.suppress(FileNotFoundError):
            os.replace(self.path, f"{self.path}.1")
        self._open()

    def write(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        run_id = current_run_id.get()
        if run_id and "run_id" not in record:
            record = {**record, "run_id": run_id}
        data = (json.dumps(record, sort_keys=True, default=str, separators=(",", ":")) + "\n").encode()
        with self._lock:
            if not self._current():
                self._close()
                self._open()
            assert self._fd is not None
            if self.max_bytes:
                lock_fd = os.open(f"{self.path}.lock", os.O_WRONLY | os.O_CREAT, 0o600)
                try:
                    fcntl.flock(lock_fd, fcntl.LOCK_EX)
                    if not self._current():
                        self._close()
                        self._open()
                    assert self._fd is not None
                    size = os.fstat(self._fd).st_size
                    if size and size + len(data) > self.max_bytes:
                        self._rotate()
                    assert self._fd is not None
                    os.write(self._fd, data)
                finally:
                    os.close(lock_fd)
            else:
                os.write(self._fd, data)

    def close(self) -> None:
        with self._lock:
            self._close()


# ----- reading -----------------------------------------------------------------------------------------------
def audit_files(path: str | Path) -> list[Path]:
    """The audit file and its rotated predecessors, oldest first."""
    p = Path(path)
    rotated = []
    for q in p.parent.glob(p.name + ".*"):
        suffix = q.name[len(p.name) + 1 :]
        if suffix.isdigit():
            rotated.append((int(suffix), q))
    files = [q for _, q in sorted(rotated, reverse=True)]
    return files + ([p] if p.exists() else [])


def read_audit(path: str | Path) -> Iterator[dict[str, Any]]:
    """Every record of the log and its rotated files, oldest first (unparseable lines are skipped)."""
    for f in audit_files(path):
        with f.open("r", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(rec, dict):
                    yield rec


def query_audit(
    path: str | Path,
    *,
    user: str | None = None,
    chunk_ids: Iterable[str] | None = None,
    decision: str | None = None,
    run: str | None = None,
) -> list[dict[str, Any]]:
    """Records matching every given criterion: principal ``user``, a decision that allowed or denied one of
    ``chunk_ids``, decision id ``decision`` (a prefix is enough), ``run`` id."""
    wanted = set(chunk_ids) if chunk_ids is not None else None
    out = []
    for rec in read_audit(path):
        if user is not None and rec.get("principal") != user:
            continue
        if decision is not None and not str(rec.get("decision_id", "")).startswith(decision):
            continue
        if run is not None and rec.get("run_id") != run:
            continue
        if wanted is not None:
            seen = set(rec.get("allowed_ids") or []) | set(rec.get("denied_ids") or [])
            if not wanted & seen:
                continue
        out.append(rec)
    return out
