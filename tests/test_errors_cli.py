"""Every error is one clean line: bad inputs fed through the real CLI (a subprocess) exit 2 for a user/config
mistake and 1 for a runtime failure, with one ``error:`` line naming the file or key, and never a traceback.

The matrix covers absurd integers in overrides, unsupported filter operators, YAML that is broken, not UTF-8,
nested too deeply or an alias bomb (config folders, identity user files, front matter, sidecars), corrupted,
foreign and other-version store files (at open and at query time, where the store error is raised inside a
Haystack component), an unreachable generator endpoint, and the last-resort handler for unexpected exceptions.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import run_cli

BOMB = (
    "\n".join(
        ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
        + [f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 9)]
    )
    + "\n"
)
STORE = Path(".ragconf/store/handbook.sqlite")
ASK = ("ask", "How do I fail over the database?", "--user", "alice", "tracking=disabled")
CONFIG_YAML = """defaults:
  - corpus: handbook
  - store: sqlite
  - embedder: minilm
  - pipeline: mine
  - generator: extractive
  - identity: handbook
  - policy: default
  - tracking: disabled
  - eval: none
  - _self_
"""
HYBRID = (Path(__file__).resolve().parents[1] / "configs" / "pipeline" / "hybrid.yaml").read_text()


@dataclass
class Case:
    name: str
    args: tuple[str, ...]
    code: int
    says: tuple[str, ...]  # substrings of the error line ("{tmp}" is the case's directory)
    setup: Callable[[Path, bytes], None] | None = None
    env: dict[str, str] | None = None


def _store(data: bytes | Callable[[bytes], bytes]) -> Callable[[Path, bytes], None]:
    def setup(tmp: Path, good: bytes) -> None:
        path = tmp / STORE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data(good) if callable(data) else data)

    return setup


def _flip(good: bytes) -> bytes:
    """Damage the second half of the file (chunk and index pages), not the schema and ``info`` pages the store
    reads when it opens: the damage must be found by a query, inside a component."""
    data = bytearray(good)
    for off in range(len(data) // 2, len(data), 997):
        data[off] ^= 0xFF
    return bytes(data)


def _sqlite(sql: str, start_from_good: bool) -> Callable[[Path, bytes], None]:
    def setup(tmp: Path, good: bytes) -> None:
        path = tmp / STORE
        path.parent.mkdir(parents=True, exist_ok=True)
        if start_from_good:
            path.write_bytes(good)
        db = sqlite3.connect(path)
        db.executescript(sql)
        db.close()

    return setup


def _config(pipeline_yaml: str | bytes) -> Callable[[Path, bytes], None]:
    def setup(tmp: Path, good: bytes) -> None:
        (tmp / "cfg" / "pipeline").mkdir(parents=True)
        (tmp / "cfg" / "config.yaml").write_text(CONFIG_YAML)
        target = tmp / "cfg" / "pipeline" / "mine.yaml"
        target.write_bytes(pipeline_yaml if isinstance(pipeline_yaml, bytes) else pipeline_yaml.encode())

    return setup


def _users(files: dict[str, str | bytes]) -> Callable[[Path, bytes], None]:
    def setup(tmp: Path, good: bytes) -> None:
        (tmp / "users").mkdir()
        for name, text in files.items():
            (tmp / "users" / name).write_bytes(text if isinstance(text, bytes) else text.encode())

    return setup


def _docs(files: dict[str, str]) -> Callable[[Path, bytes], None]:
    def setup(tmp: Path, good: bytes) -> None:
        (tmp / "docs").mkdir()
        for name, text in files.items():
            (tmp / "docs" / name).write_text(text)

    return setup


TOP_K = "pipeline.components.bm25.params.top_k"
CASES = [
    # ----- absurd integers in overrides: config errors naming the key and the range ---------------------------
    Case(
        "top_k 10**23",
        ("validate", f"{TOP_K}=99999999999999999999999"),
        2,
        (TOP_K, "out of range", "9223372036854775807"),
    ),
    Case("top_k negative", ("validate", f"{TOP_K}=-5"), 2, ("pipeline.components.bm25", "top_k must be > 0")),
    Case("top_k inf", ("validate", f"{TOP_K}=1e309"), 2, (TOP_K, "finite")),
    Case(
        "batch_size 10**30",
        ("validate", "embedder.batch_size=" + "1" + "0" * 30),
        2,
        ("embedder.batch_size", "out of range"),
    ),
    Case("batch_size negative", ("validate", "embedder.batch_size=-1"), 2, ("embedder.batch_size", "greater than 0")),
    Case(
        "eval.top_k 10**23",
        ("validate", "eval=handbook", "eval.top_k=99999999999999999999999"),
        2,
        ("eval.top_k", "out of range"),
    ),
    # ----- a filter operator the store does not support ------------------------------------------------------
    Case(
        "filter operator",
        ("validate", "+pipeline.components.bm25.params.filters={field:meta.x,operator:'$regex',value:1}"),
        2,
        (
            "pipeline.components.bm25.params.filters",
            "unsupported operator '$regex'",
            "==, !=, >, >=, <, <=, in, not in",
        ),
    ),
    # ----- YAML in a user config folder -----------------------------------------------------------------------
    Case(
        "config alias bomb",
        ("validate", "-c", "{tmp}/cfg"),
        2,
        ("{tmp}/cfg/pipeline/mine.yaml", "aliases"),
        _config("name: x\n" + BOMB),
    ),
    Case(
        "config recursive alias",
        ("validate", "-c", "{tmp}/cfg"),
        2,
        ("mine.yaml", "recursive alias"),
        _config("a: &a [*a]\n"),
    ),
    Case(
        "config nested too deeply",
        ("validate", "-c", "{tmp}/cfg"),
        2,
        ("mine.yaml", "nested too deeply"),
        _config("[" * 20000 + "\n"),
    ),
    Case(
        "config YAML syntax",
        ("validate", "-c", "{tmp}/cfg"),
        2,
        ("{tmp}/cfg/pipeline/mine.yaml", "invalid YAML", "at line 24"),
        _config(HYBRID + "x: [1, 2\n"),
    ),
    Case(
        "config not UTF-8",
        ("validate", "-c", "{tmp}/cfg"),
        2,
        ("{tmp}/cfg/pipeline/mine.yaml", "not UTF-8"),
        _config(HYBRID.encode() + b"# caf\xe9\n"),
    ),
    # ----- identity user files --------------------------------------------------------------------------------
    Case(
        "users alias bomb",
        ("validate", "identity.users_dir={tmp}/users"),
        2,
        ("{tmp}/users/alice.yaml", "aliases"),
        _users({"alice.yaml": BOMB + "groups: *l8\n"}),
    ),
    Case(
        "users not UTF-8",
        ("validate", "identity.users_dir={tmp}/users"),
        2,
        ("{tmp}/users/alice.yaml", "not UTF-8"),
        _users({"alice.yaml": b"groups: [caf\xe9]\n"}),
    ),
    Case(
        "users.yaml a list",
        ("validate", "identity.users_dir={tmp}/users"),
        2,
        ("{tmp}/users/users.yaml", "must map user ids"),
        _users({"users.yaml": "- a\n- b\n"}),
    ),
    # ----- front matter and sidecars (the document is rejected, the run says so on one line) -----------------
    Case(
        "front matter alias bomb",
        ("ingest", "corpus=files", "corpus.path={tmp}/docs", "tracking=disabled"),
        1,
        ("{tmp}/docs/a.md", "aliases"),
        _docs({"a.md": "---\n" + BOMB + "title: x\n---\nhello\n"}),
    ),
    Case(
        "sidecar alias bomb",
        ("ingest", "corpus=files", "corpus.path={tmp}/docs", "tracking=disabled"),
        1,
        ("{tmp}/docs/a.md.meta.yaml", "aliases"),
        _docs({"a.md": "hello\n", "a.md.meta.yaml": BOMB}),
    ),
    # ----- corrupted, foreign and other-version stores: runtime errors naming the path with a hint ------------
    Case("store garbage bytes", ASK, 1, (str(STORE), "not a database"), _store(os.urandom(30_000))),
    Case("store text file", ASK, 1, (str(STORE), "not a database"), _store(b"hello\n" * 200)),
    Case("store truncated", ASK, 1, (str(STORE), "malformed"), _store(lambda good: good[: len(good) // 2])),
    Case("store damaged pages (query time, inside a component)", ASK, 1, (str(STORE), "query failed"), _store(_flip)),
    Case(
        "store foreign SQLite",
        ASK,
        1,
        (str(STORE), "not a ragconf store"),
        _sqlite("CREATE TABLE runs (id TEXT);", False),
    ),
    Case("store other version", ASK, 1, (str(STORE), "layout version 7"), _sqlite("PRAGMA user_version=7;", True)),
    Case(
        "store is a directory",
        ASK,
        1,
        (str(STORE), "is a directory"),
        lambda tmp, good: (tmp / STORE).mkdir(parents=True),
    ),
    Case(
        "ingest into a corrupted store",
        ("ingest", "tracking=disabled"),
        1,
        (str(STORE), "not a database"),
        _store(os.urandom(30_000)),
    ),
    Case(
        "eval on a corrupted store",
        ("eval", "eval=handbook", "tracking=disabled"),
        1,
        (str(STORE), "not a database"),
        _store(os.urandom(30_000)),
    ),
    # ----- a generator endpoint that is down (an error inside a component of the generation stage) ------------
    Case(
        "generator endpoint down",
        (
            "ask",
            "What is the wifi password policy?",
            "--user",
            "alice",
            "tracking=disabled",
            "generator=openai",
            "generator.components.llm.params.base_url=http://127.0.0.1:9/v1",
            "+generator.components.llm.params.max_retries=0",
        ),
        1,
        ("127.0.0.1:9",),
        _store(lambda good: good),
        {"OPENAI_API_KEY": "sk-test-not-a-key"},
    ),
]
RESULTS: dict[str, str] = {}


@pytest.fixture(scope="module")
def good_store(handbook_dir: Path) -> bytes:
    return (handbook_dir / STORE).read_bytes()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_error_is_one_clean_line(case: Case, good_store: bytes, tmp_path: Path) -> None:
    if case.setup is not None:
        case.setup(tmp_path, good_store)
    args = [a.replace("{tmp}", str(tmp_path)) for a in case.args]
    t0 = time.perf_counter()
    proc = run_cli(*args, cwd=tmp_path, env=case.env)
    elapsed = time.perf_counter() - t0
    traceback = "Traceback" in proc.stderr or "Traceback" in proc.stdout
    RESULTS[case.name] = "traceback" if traceback else "clean"
    assert not traceback, proc.stderr[-3000:]
    assert proc.returncode == case.code, (proc.returncode, proc.stderr[-2000:])
    # one `error:` line, or for ingest one line per rejected document
    lines = [line for line in proc.stderr.splitlines() if line.strip().startswith(("error:", "rejected "))]
    assert len(lines) == 1, proc.stderr[-2000:]
    for text in case.says:
        assert text.replace("{tmp}", str(tmp_path)) in lines[0], (text, lines[0])
    assert "internal error" not in proc.stderr
    assert elapsed < 60


def test_unexpected_exception_is_one_line_and_a_traceback_on_request(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    import ragconf.spec
    from ragconf.cli import app

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(ragconf.spec, "load_config", boom)
    monkeypatch.delenv("RAGCONF_DEBUG", raising=False)
    result = CliRunner().invoke(app, ["validate"])
    assert result.exit_code == 1
    assert result.output.strip() == (
        "error: internal error: RuntimeError: boom second line (set RAGCONF_DEBUG=1 for a traceback)"
    )
    monkeypatch.setenv("RAGCONF_DEBUG", "1")
    result = CliRunner().invoke(app, ["validate"])
    assert result.exit_code == 1
    assert "Traceback" in result.output and "RuntimeError: boom" in result.output


def test_private_workdir_after_ingest_and_ask(tmp_path: Path) -> None:
    """`.ragconf/` is 0700 and everything in it (store, -wal/-shm, mlflow.db, artifacts, audit log) 0600."""
    shutil.rmtree(tmp_path / ".ragconf", ignore_errors=True)
    run_cli("ingest", cwd=tmp_path, check=True)
    run_cli("ask", "How do I fail over the database?", "--user", "alice", cwd=tmp_path, check=True)
    work = tmp_path / ".ragconf"
    paths = [work, *work.rglob("*")]
    names = {p.name for p in paths}
    assert {"handbook.sqlite", "mlflow.db", "audit.jsonl"} <= names
    assert any(p.parent.name == "artifacts" for p in paths if p.is_file())
    loose = {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in paths if p.stat().st_mode & 0o077}
    assert loose == {}
