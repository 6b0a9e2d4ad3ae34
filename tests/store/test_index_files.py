"""Index files (``<store>.idx/``): a new process loads the BM25 index, vectors and HNSW graph of the latest write
instead of rebuilding them; a write (by any process) makes them stale and they are never used then; the graph
of the next generation is updated from the previous one; damaged or foreign files are ignored, never an error;
everything is private to the user."""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np
import pytest
from haystack import Document

from ragconf.errors import StoreError
from ragconf.store import bm25index, open_store
from ragconf.store.ann import HnswIndex, usearch_available
from ragconf.store.sqlite import SQLiteChunkStore

pytestmark = pytest.mark.skipif(not usearch_available(), reason="needs ragconf[ann] (usearch)")

DIM = 16
N = 400
WORDS = [f"w{i}" for i in range(50)]
ANN = {
    "mode": "on",
    "min_rows": 0,
    "exact_rows": 0,
    "candidates": 50,
    "expansion_search": 1600,
}  # ef >> N: no recall flakes


def vecs(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


V = vecs(N + 50, 1)


def doc(i: int, vec: np.ndarray | None = None) -> Document:
    text = " ".join(WORDS[(i * k) % 50] for k in (1, 3, 7)) + f" uniq{i}"
    emb = (V[i] if vec is None else vec).tolist()
    return Document(id=f"c{i}", content=text, meta={"doc_id": f"d{i}", "tenant": "a" if i % 2 else "b"}, embedding=emb)


def open_(path: Path, ann: dict | None = None, **kw: object) -> SQLiteChunkStore:
    return SQLiteChunkStore(path, embedding_dim=DIM, ann=ann or ANN, index_files={"min_rows": 0}, **kw)  # type: ignore[arg-type]


def exact(path: Path) -> SQLiteChunkStore:
    return SQLiteChunkStore(path, embedding_dim=DIM, ann={"mode": "off"}, index_files=False)


def results(store: SQLiteChunkStore, i: int) -> tuple[list[str], list[str], list[str]]:
    flt = {"field": "meta.tenant", "operator": "==", "value": "a"}
    return (
        [d.id for d in store.bm25_retrieval(f"uniq{i} w3 w7", top_k=10)],
        [d.id for d in store.embedding_retrieval(V[i].tolist(), top_k=10)],
        [d.id for d in store.hybrid_retrieval(f"w1 uniq{i}", V[i].tolist(), filters=flt, top_k=5)],
    )


@pytest.fixture
def path(tmp_path: Path) -> Path:
    p = tmp_path / "store" / "s.sqlite"
    s = open_(p)
    s.replace_docs("c", [(f"d{i}", "h", [doc(i)]) for i in range(N)])
    took = s.warm()
    assert set(took) == {"bm25", "dense", "hnsw"}
    s.close()
    return p


def gen_dirs(path: Path) -> list[str]:
    return sorted(p.name for p in (path.parent / "s.sqlite.idx").iterdir() if p.name.startswith("g"))


def test_a_new_process_loads_the_saved_indexes_and_gets_the_same_results(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    idx = path.parent / "s.sqlite.idx"
    assert stat.S_IMODE(idx.stat().st_mode) == 0o700
    files = [p for p in idx.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"meta.json", "dense.npy", "dense_rowids.npy", "bm25.npz"}
    assert any(p.name.startswith("hnsw-") for p in files)
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files)
    ref = exact(path)
    want = [results(ref, i) for i in (3, 50, 333)]
    ref.close()

    def no_rebuild(*a: object, **k: object) -> None:
        raise AssertionError("rebuilt although the index files are current")

    monkeypatch.setattr(bm25index.BM25Index, "build", classmethod(no_rebuild))
    monkeypatch.setattr(HnswIndex, "build", classmethod(no_rebuild))
    s = open_(path)
    got = [results(s, i) for i in (3, 50, 333)]
    assert [g[0] for g in got] == [w[0] for w in want]  # BM25: exact either way
    for g, w in zip(got, want, strict=True):  # dense and hybrid through the graph: approximate at the tail
        assert g[1][0] == w[1][0] and len(set(g[1]) & set(w[1])) >= 9
        assert g[2][0] == w[2][0] and len(set(g[2]) & set(w[2])) >= 4
    assert s._snap.ann is not None and s._snap.bm25 is not None
    s.close()


def test_a_write_by_another_process_makes_the_files_stale_and_the_graph_is_updated_not_rebuilt(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reader = open_(path)
    assert results(reader, 7)[1][0] == "c7"
    writer = open_(path)  # another process: its own connection and caches
    writer.delete_docs("c", ["d7", "d8"])
    writer.replace_docs("c", [(f"d{i}", "h", [doc(i)]) for i in range(N, N + 20)])
    writer.close()

    def no_rebuild(*a: object, **k: object) -> None:
        raise AssertionError("graph rebuilt in full for a small change")

    monkeypatch.setattr(HnswIndex, "build", classmethod(no_rebuild))
    bm25, dense, _ = results(reader, 7)
    assert "c7" not in bm25 and "c7" not in dense  # deleted: never served from the older files
    assert results(reader, N + 5)[1][0] == f"c{N + 5}"  # added after the files were written
    graph = reader._snap.ann
    assert graph is not None and graph.size == N - 2 + 20
    monkeypatch.undo()
    ref = exact(path)
    for i in (N + 5, 100, 201):
        assert results(reader, i)[0] == results(ref, i)[0]
        got, want = results(reader, i)[1], results(ref, i)[1]
        assert len(set(got) & set(want)) >= 9
    ref.close()
    reader.close()
    assert len(gen_dirs(path)) == 1  # the older generation was pruned once the new graph was saved


def test_a_reused_row_id_gets_its_new_vector_in_the_updated_graph(path: Path) -> None:
    s = open_(path)
    s.delete_docs("c", [f"d{N - 1}"])  # the highest row id is free again ...
    far = -V[0]
    s.replace_docs("c", [("new", "h", [doc(N + 40, vec=far)])])  # ... and the next insert takes it
    got = s.embedding_retrieval(far.tolist(), top_k=1)
    assert [d.id for d in got] == [f"c{N + 40}"] and got[0].score == pytest.approx(1.0, abs=1e-5)
    assert f"c{N - 1}" not in [d.id for d in s.embedding_retrieval(V[N - 1].tolist(), top_k=10)]
    s.close()


@pytest.mark.parametrize("junk", [b"\x93NUMPY garbage" * 3, b"PK\x03\x04 not a zip", b""], ids=["npy", "zip", "empty"])
@pytest.mark.parametrize("name", ["dense.npy", "dense_rowids.npy", "bm25.npz", "meta.json", "hnsw"])
def test_damaged_files_are_ignored_and_rebuilt(path: Path, name: str, junk: bytes) -> None:
    ref = exact(path)
    want = [results(ref, i) for i in (3, 50)]
    ref.close()
    (gen,) = gen_dirs(path)
    d = path.parent / "s.sqlite.idx" / gen
    target = next(d.glob("hnsw-*")) if name == "hnsw" else d / name
    target.write_bytes(junk)
    # a search as wide as the store (every row proposed, ef beyond the size): exact, so the check is not flaky
    s = open_(path, ann={**ANN, "candidates": N + 50, "expansion_search": 4 * N})
    got = [results(s, i) for i in (3, 50)]
    assert [g[0] for g in got] == [w[0] for w in want] and [g[2][:1] for g in got] == [w[2][:1] for w in want]
    assert [g[1][0] for g in got] == ["c3", "c50"]  # each query's own vector, cosine 1.0
    s.close()


def test_a_new_store_at_the_same_path_never_uses_the_old_files(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    s = open_(path)  # same generation numbers ahead, other content
    s.replace_docs("c", [(f"d{i}", "h", [doc(i, vec=V[(i + 1) % N])]) for i in range(N)])
    assert results(s, 5)[1][0] == "c4"  # c4 now holds V[5]; the old files said c5
    s.close()


def test_disabled_or_small_stores_write_no_files(tmp_path: Path) -> None:
    p = tmp_path / "s.sqlite"
    s = SQLiteChunkStore(p, embedding_dim=DIM, ann=ANN, index_files={"enabled": False})
    s.replace_docs("c", [(f"d{i}", "h", [doc(i)]) for i in range(50)])
    s.warm()
    s.close()
    s = SQLiteChunkStore(p, embedding_dim=DIM, ann=ANN)  # default min_rows 20,000
    s.warm()
    s.close()
    assert not (tmp_path / "s.sqlite.idx").exists()


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"bogus": 1}, "unknown key store.index_files.bogus"),
        ({"min_rows": -1}, "store.index_files.min_rows"),
        ({"enabled": "yes"}, "store.index_files.enabled"),
        ("on", "store.index_files must be a mapping"),
    ],
)
def test_bad_options_are_store_errors(tmp_path: Path, raw: object, match: str) -> None:
    with pytest.raises(StoreError, match=match):
        open_store({"path": str(tmp_path / "s.sqlite"), "index_files": raw}, embedding_dim=DIM)


# ----- attacks: stale, replaced, damaged -------------------------------------------------------------------
FLT = {"field": "meta.tenant", "operator": "==", "value": "a"}


def filtered(store: SQLiteChunkStore, i: int) -> tuple[list[str], list[str], list[str]]:
    return (
        [d.id for d in store.bm25_retrieval(f"uniq{i} w3 w7", top_k=10, filters=FLT)],
        [d.id for d in store.embedding_retrieval(V[i].tolist(), top_k=3, filters=FLT)],
        [d.id for d in store.hybrid_retrieval(f"w1 uniq{i}", V[i].tolist(), filters=FLT, top_k=3)],
    )


def same_as_exact(store: SQLiteChunkStore, path: Path, queries: tuple[int, ...] = (3, 7, 50)) -> None:
    ref = exact(path)
    for i in queries:
        assert results(store, i)[0] == results(ref, i)[0]  # BM25: exact either way
        assert results(store, i)[1][:1] == results(ref, i)[1][:1]
        got, want = filtered(store, i), filtered(ref, i)
        assert got[0] == want[0] and got[1][:1] == want[1][:1]
    ref.close()


def test_a_restored_copy_written_again_never_uses_the_files_of_the_abandoned_history(path: Path) -> None:
    backup = path.with_name("backup.sqlite")
    backup.write_bytes(path.read_bytes())
    s = open_(path)
    before = s.index_version()
    s.delete_docs("c", ["d3", "d51"])  # generation g+1 of one history, its files saved
    s.warm()
    s.close()
    for suffix in ("-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    path.write_bytes(backup.read_bytes())  # the operator restores the copy ...
    s = open_(path)
    assert s.index_version() == before
    s.delete_docs("c", ["d7"])  # ... and writes: generation g+1 again, other content
    s.close()
    s = open_(path)
    same_as_exact(s, path, (3, 7, 51))
    assert "c7" not in results(s, 7)[0] and "c3" in results(s, 3)[0]
    s.close()


def test_the_index_version_changes_with_every_write_even_at_a_repeated_generation(path: Path) -> None:
    backup = path.with_name("backup.sqlite")
    backup.write_bytes(path.read_bytes())
    s = open_(path)
    s.delete_docs("c", ["d3"])
    first = s.index_version()
    s.close()
    path.write_bytes(backup.read_bytes())
    for suffix in ("-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    s = open_(path)
    s.delete_docs("c", ["d4"])
    assert s.index_version().split(":")[0] == first.split(":")[0] and s.index_version() != first
    s.close()


def test_a_store_replaced_while_open_is_an_error_never_a_mix_of_two_stores(path: Path) -> None:
    import threading

    server = open_(path)
    assert filtered(server, 5)[0][0] == "c5"  # tenant a; its filter mask is cached for this generation
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    other = open_(path)  # the store deleted and ingested again: same generation numbers, tenants flipped

    def flip(i: int) -> Document:
        d = doc(i)
        d.meta["tenant"] = "b" if i % 2 else "a"
        return d

    other.replace_docs("c", [(f"d{i}", "h", [flip(i)]) for i in range(N)])
    other.close()
    outcome: list[object] = []

    def read() -> None:  # a new thread: its own connection, opened on the new file
        try:
            outcome.append([d.meta["tenant"] for d in server.bm25_retrieval("uniq4 uniq5", top_k=5, filters=FLT)])
        except StoreError as exc:
            outcome.append(exc)

    t = threading.Thread(target=read)
    t.start()
    t.join()
    assert isinstance(outcome[0], StoreError) and "replaced" in str(outcome[0])
    with pytest.raises(StoreError, match="replaced"):  # the old connection too: the file at the path is another
        server.bm25_retrieval("uniq4 uniq5", top_k=5, filters=FLT)
    with pytest.raises(StoreError, match="replaced"):  # and a write never goes to the deleted file
        server.delete_docs("c", ["d5"])
    server.close()


def _npz(d: Path, **changes: object) -> None:
    with np.load(d / "bm25.npz") as z:
        arrays = {k: z[k] for k in z.files}
    for k, f in changes.items():
        arrays[k] = f(arrays[k])  # type: ignore[operator]
    with open(d / "bm25.npz", "wb") as f:
        np.savez(f, **arrays)


@pytest.mark.parametrize(
    "change",
    [
        {"indptr": lambda a: a.astype(np.float64)},
        {"indices": lambda a: a.astype(np.float64)},
        {"data": lambda a: a.astype(str)},
        {"data": lambda a: np.full_like(a, np.nan)},
        {"rowids": lambda a: a.astype(np.float64) + 0.5},
        {"rowids": lambda a: a[::-1].copy()},
        {"rowids": lambda a: np.stack([a, a])},
        {"vocab": lambda a: np.frombuffer(b"w1\nw1", dtype=np.uint8)},
        {"vocab": lambda a: a.astype(np.int64)},
        {"data": lambda a: np.array([{"a": 1}], dtype=object)},
    ],
    ids=[
        "indptr-float",
        "indices-float",
        "data-str",
        "data-nan",
        "rowids-float",
        "rowids-reversed",
        "rowids-2d",
        "vocab-dup",
        "vocab-int",
        "data-object",
    ],  # fmt: skip
)
def test_well_formed_but_wrong_bm25_arrays_are_ignored_never_a_traceback(path: Path, change: dict) -> None:  # type: ignore[type-arg]
    (gen,) = gen_dirs(path)
    _npz(path.parent / "s.sqlite.idx" / gen, **change)
    s = open_(path)
    same_as_exact(s, path)
    s.close()


@pytest.mark.parametrize("values", ["nan", "other-store"])
def test_saved_vectors_that_differ_from_the_store_are_rebuilt(path: Path, values: str) -> None:
    (gen,) = gen_dirs(path)
    dense = path.parent / "s.sqlite.idx" / gen / "dense.npy"
    shape = np.load(dense).shape
    other = np.full(shape, np.nan, np.float32) if values == "nan" else vecs(shape[0], 99)
    np.save(dense, other.astype(np.float32))
    s = open_(path)
    same_as_exact(s, path)
    s.close()


def test_a_read_only_index_dir_is_used_and_never_an_error(path: Path) -> None:
    idx = path.parent / "s.sqlite.idx"
    s = open_(path)
    s.replace_docs("c", [("dx", "h", [doc(N + 1)])])  # a new generation: its files cannot be written
    idx.chmod(0o500)
    try:
        same_as_exact(s, path)
    finally:
        idx.chmod(0o700)
        s.close()
