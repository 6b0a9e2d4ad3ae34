"""Private files: the working dir (``.ragconf/``) is 0700 and what ragconf writes in it 0600.

The store, the MLflow database, the audit log and run artifacts hold corpus text, questions and access
decisions; no other local account may read them. Directories ragconf creates are 0700 and files 0600;
:func:`private_dir` with ``tighten=True`` also narrows an existing directory ragconf owns (a ``.ragconf/`` made
by an older version). :func:`private_umask` covers files a library creates (MLflow artifacts): while any
thread is inside it the process umask masks group and other bits.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

__all__ = ["DIR_MODE", "FILE_MODE", "private_dir", "private_file", "private_umask", "private_workdir"]

#: The default working dir name; an existing dir of this name is narrowed to 0700 (one made by an older ragconf).
WORKDIR_NAME = ".ragconf"

DIR_MODE = 0o700
FILE_MODE = 0o600


def _narrow(path: Path, mode: int) -> None:
    """chmod ``path`` to ``mode`` when it is ours and looser (a shared or foreign path is left alone)."""
    try:
        st = path.stat()
        if st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) & ~mode:
            os.chmod(path, stat.S_IMODE(st.st_mode) & mode)
    except OSError:
        pass


def private_dir(path: str | Path, *, tighten: bool = False) -> Path:
    """Create ``path`` and its missing parents as 0700. An existing directory is left as it is, unless
    ``tighten`` (for ragconf's own working dir): then group/other bits are removed when it is ours."""
    p = Path(path)
    missing: list[Path] = []
    cur = p
    while not cur.exists() and cur != cur.parent:
        missing.append(cur)
        cur = cur.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=DIR_MODE)
        except FileExistsError:
            pass
        else:
            _narrow(d, DIR_MODE)  # mkdir's mode is filtered by the umask only (never widened); be exact
    if tighten and not missing:
        _narrow(p, DIR_MODE)
    return p


def private_file(path: str | Path) -> Path:
    """Make sure ``path`` exists as a 0600 file (created empty if missing; an existing file of ours is
    narrowed to 0600). Its directory is created with :func:`private_dir`."""
    p = Path(path)
    private_dir(p.parent)
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        _narrow(p, FILE_MODE)
    else:
        os.close(fd)
    return p


def private_workdir(path: str | Path) -> Path:
    """Create ragconf's working dir 0700. An existing one is narrowed to 0700 only when it is named
    ``.ragconf`` (a ``project.workdir`` such as ``.`` or ``~`` is never chmod-ed). Never raises: whoever
    writes into the dir reports a dir that cannot be created."""
    p = Path(path)
    with contextlib.suppress(OSError):
        private_dir(p, tighten=p.resolve().name == WORKDIR_NAME)
    return p


_umask_lock = threading.Lock()
_umask_depth = 0
_umask_saved = 0


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """While inside (in any thread), new files and directories get no group/other bits. Nested and
    concurrent uses are counted: the umask is restored when the last one leaves."""
    global _umask_depth, _umask_saved
    with _umask_lock:
        if _umask_depth == 0:
            _umask_saved = os.umask(0o077)
            os.umask(_umask_saved | 0o077)
        _umask_depth += 1
    try:
        yield
    finally:
        with _umask_lock:
            _umask_depth -= 1
            if _umask_depth == 0:
                os.umask(_umask_saved)
