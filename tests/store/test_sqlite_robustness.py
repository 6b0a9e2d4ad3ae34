"""The embedded store fails closed and clean: corrupted, foreign or other-version files, odd filters and absurd
numbers are one StoreError naming the path (never a sqlite3/numpy/json traceback); its files are private."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import numpy as np
import pytest
from haystack import Document

from ragconf._fs import private_dir, private_file, private_umask, private_workdir
from ragconf.errors import StoreError
from ragconf.store import open_store
from ragconf.store.sqlite import APPLICATION_ID

DIM = 8


def vec(seed: int) -> list[float]:
    v = np.random.default_rng(seed).normal(size=DIM)
    return (v / np.linalg.norm(v)).tolist()


def build(path: Path, n: int = 200) -> None:
    s = open_store({"type": "sqlite", "path": str(path)}, embedding_dim=DIM)
    s.replace_docs(
        "c",
        [
            (
                f"d{i}",
                "h",
                [
                    Document(
                        id=f"d{i}",
                        content=f"failover word{i} " * 40,
                        meta={"doc_id": f"d{i}", "tenant": "acme", "rank": i},
                        embedding=vec(i),
                    )
                ],
            )
            for i in range(n)
        ],
    )
    s.close()


def every_read(path: Path) -> list[str]:
    """Open the store and run every read; the StoreError messages (or 'ok'). Anything else propagates."""
    try:
        s = open_store({"type": "sqlite", "path": str(path)}, embedding_dim=DIM)
    except StoreError as exc:
        return [str(exc)]
    out = []
    flt = {"field": "meta.tenant", "operator": "==", "value": "acme"}
    reads = [
        lambda: s.bm25_retrieval("failover", top_k=5),
        lambda: s.bm25_retrieval("failover", filters=flt, top_k=5),
        lambda: s.embedding_retrieval(vec(1), top_k=5),
        lambda: s.embedding_retrieval(vec(1), filters=flt, top_k=5),
        lambda: s.doc_hashes("c"),
        lambda: s.filter_documents(flt),
        s.count_documents,
        s.fingerprint,
    ]
    for read in reads:
        try:
            read()
            out.append("ok")
        except StoreError as exc:
            out.append(str(exc))
    s.close()
    return out


def _damage(data: bytes, how: str) -> bytes:
    if how == "garbage":
        return os.urandom(20_000)
    if how == "text":
        return b"this is not a database\n" * 100
    if how == "truncated-header":
        return data[:100]
    if how == "truncated-half":
        return data[: len(data) // 2]
    if how == "zeroed-pages":
        return data[: 4096 * 3] + b"\0" * 4096 * 6 + data[4096 * 9 :]
    flipped = bytearray(data)  # "flipped-bytes"
    for off in range(8192, len(flipped), 997):
        flipped[off] ^= 0xFF
    return bytes(flipped)


@pytest.mark.parametrize(
    "how", ["garbage", "text", "truncated-header", "truncated-half", "zeroed-pages", "flipped-bytes"]
)
def test_corrupted_store_is_a_store_error_naming_the_path(tmp_path: Path, how: str) -> None:
    good = tmp_path / "good.sqlite"
    build(good)
    bad = tmp_path / f"{how}.sqlite"
    bad.write_bytes(_damage(good.read_bytes(), how))
    results = every_read(bad)
    errors = [r for r in results if r != "ok"]
    assert errors, f"{how}: damage went unnoticed"
    for err in errors:
        assert str(bad) in err.splitlines()[0]
        assert "hint:" in err


def test_foreign_sqlite_database_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "mlflow.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE runs (id TEXT)")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match=r"mlflow\.db' is a SQLite database but not a ragconf store \(tables: runs\)"):
        open_store({"type": "sqlite", "path": str(path)}, embedding_dim=DIM)
    db = sqlite3.connect(path)
    assert [r[0] for r in db.execute("SELECT name FROM sqlite_master")] == ["runs"]
    assert db.execute("PRAGMA application_id").fetchone()[0] == 0
    db.close()
    other = tmp_path / "other-app.db"
    db = sqlite3.connect(other)
    db.execute("PRAGMA application_id=1234")
    db.close()
    with pytest.raises(StoreError, match="another application"):
        open_store({"type": "sqlite", "path": str(other)}, embedding_dim=DIM)


def test_store_from_another_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    build(path, 3)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(StoreError, match=r"layout version 99; this ragconf reads version 1") as info:
        open_store({"type": "sqlite", "path": str(path)}, embedding_dim=DIM)
    assert "re-run `ragconf ingest`" in str(info.value)


def test_store_written_before_the_application_id_is_adopted(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    build(path, 3)
    db = sqlite3.connect(path)
    db.execute("PRAGMA application_id=0")
    db.execute("PRAGMA user_version=0")
    db.execute("DELETE FROM info WHERE key='generation'")
    db.commit()
    db.close()
    s = open_store({"type": "sqlite", "path": str(path)}, embedding_dim=DIM)
    assert s.count_documents() == 3
    assert s.bm25_retrieval("failover", top_k=1)
    s.close()


def test_unusable_paths_are_store_errors(tmp_path: Path) -> None:
    (tmp_path / "adir.sqlite").mkdir()
    with pytest.raises(StoreError, match="is a directory"):
        open_store({"type": "sqlite", "path": str(tmp_path / "adir.sqlite")}, embedding_dim=DIM)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(StoreError, match="cannot create store"):
        open_store({"type": "sqlite", "path": str(tmp_path / "afile" / "s.sqlite")}, embedding_dim=DIM)


def test_closed_store_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    build(path, 3)
    s = open_store({"type": "sqlite", "path": str(path)}, embedding_dim=DIM)
    assert s.count_documents() == 3
    s.close()
    s.close()  # idempotent
    with pytest.raises(StoreError, match="is closed"):
        s.count_documents()
    with pytest.raises(StoreError, match="is closed"):
        s.replace_docs("c", [])


def test_absurd_numbers_in_filters_and_top_k(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    build(path, 20)
    s = open_store({"type": "sqlite", "path": str(path)}, embedding_dim=DIM)
    huge = 10**30
    assert s.filter_documents({"field": "meta.rank", "operator": ">", "value": huge}) == []
    assert len(s.filter_documents({"field": "meta.rank", "operator": "<", "value": huge})) == 20
    assert len(s.filter_documents({"field": "meta.rank", "operator": ">", "value": -huge})) == 20
    assert s.filter_documents({"field": "meta.rank", "operator": "in", "value": [huge, 3]})[0].meta["rank"] == 3
    with pytest.raises(StoreError, match="out of range"):
        s.filter_documents({"field": "meta.rank", "operator": ">", "value": 10**400})
    assert len(s.bm25_retrieval("failover", top_k=huge)) == 20
    flt = {"field": "meta.tenant", "operator": "==", "value": "acme"}
    assert len(s.bm25_retrieval("failover", filters=flt, top_k=huge)) == 20
    assert len(s.embedding_retrieval(vec(1), filters=flt, top_k=huge)) == 20
    s.close()


@pytest.mark.parametrize(
    ("flt", "match"),
    [
        (
            {"field": "meta.x", "operator": "$eq", "value": 1},
            r"unsupported operator '\$eq'; this store supports ==, !=",
        ),
        ({"field": "meta.x", "operator": "contains", "value": 1}, "unsupported operator 'contains'"),
        ({"field": "meta.x", "value": 1}, "has no 'operator'; this store supports"),
        ({"meta.x": {"$eq": 1}}, "not a filter"),
        ({"field": "meta.x", "operator": ["=="], "value": 1}, "operator must be a string"),
    ],
)
def test_unsupported_operators_name_the_operator_and_the_valid_ones(tmp_path: Path, flt: dict, match: str) -> None:
    path = tmp_path / "s.sqlite"
    build(path, 2)
    s = open_store({"type": "sqlite", "path": str(path)}, embedding_dim=DIM)
    for read in (
        lambda: s.bm25_retrieval("failover", filters=flt),
        lambda: s.embedding_retrieval(vec(1), filters=flt),
        lambda: s.filter_documents(flt),
    ):
        with pytest.raises(StoreError, match=match):
            read()
    s.close()
    from ragconf.store.elasticsearch import es_filter

    with pytest.raises(StoreError, match=match):
        es_filter(flt)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_store_files_and_created_folders_are_private(tmp_path: Path) -> None:
    path = tmp_path / "work" / "store" / "s.sqlite"
    s = open_store({"type": "sqlite", "path": str(path)}, embedding_dim=DIM)
    s.replace_docs("c", [("a", "h", [Document(id="a", content="x", meta={"doc_id": "a"}, embedding=vec(1))])])
    assert s.bm25_retrieval("x")  # a reader connection is open too
    files = [path, path.with_name("s.sqlite-wal"), path.with_name("s.sqlite-shm")]
    assert all(f.exists() for f in files)
    assert {f.name: _mode(f) for f in files} == {f.name: 0o600 for f in files}
    assert _mode(tmp_path / "work") == 0o700 and _mode(tmp_path / "work" / "store") == 0o700
    s.close()
    # an existing store made world-readable (an older version) is narrowed on open
    os.chmod(path, 0o644)
    open_store({"type": "sqlite", "path": str(path)}, embedding_dim=DIM).close()
    assert _mode(path) == 0o600


def test_private_helpers(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o755)
    private_dir(shared)  # an existing folder is not ours to narrow
    assert _mode(shared) == 0o755
    assert _mode(private_dir(shared / "a" / "b")) == 0o700 and _mode(shared / "a") == 0o700
    f = private_file(shared / "a" / "f.txt")
    assert f.read_text() == "" and _mode(f) == 0o600
    os.chmod(f, 0o664)
    private_file(f)
    assert _mode(f) == 0o600
    old = tmp_path / "proj" / ".ragconf"
    old.mkdir(parents=True)
    os.chmod(old, 0o755)
    private_workdir(old)
    assert _mode(old) == 0o700
    os.chmod(tmp_path / "proj", 0o755)
    private_workdir(tmp_path / "proj")  # a workdir such as "." is never narrowed
    assert _mode(tmp_path / "proj") == 0o755
    before = os.umask(0o022)
    try:
        with private_umask():
            with private_umask():
                (tmp_path / "u1").write_text("x")
            (tmp_path / "u2").write_text("x")
        (tmp_path / "u3").write_text("x")
    finally:
        os.umask(before)
    assert [_mode(tmp_path / n) for n in ("u1", "u2", "u3")] == [0o600, 0o600, 0o644]
