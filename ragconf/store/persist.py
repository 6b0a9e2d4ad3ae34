"""Index files: on-disk copies of a store generation's in-memory indexes, so a new process does not rebuild them.

The embedded store keeps its durable data in SQLite; the BM25 posting lists, the dense matrix and the HNSW
graph are derived from it and, without these files, rebuilt by every process on its first query (at 1M chunks:
seconds for BM25 and the matrix, minutes for the graph). ``<store>.idx/`` (0700, files 0600) holds them for the
latest generation:

- ``g<generation>/meta.json``: the store's id (``info.store_id``, new for every store file), the generation and
  the id of the write that made it (``info.write_id``, new for every committed write: a store restored from a
  copy reaches the same generation numbers again with other content); a directory whose ids or generation
  differ from what the reader's transaction sees is never used.
- ``dense.npy`` + ``dense_rowids.npy`` (memory-mapped, read-only), ``bm25.npz``, ``hnsw-<settings>.usearch``
  (memory-mapped view; keys are row ids).

Every file is written to a temporary name and renamed, so a reader sees a whole file or none; a file that does
not load or does not match (shape, row ids, settings) is ignored and the index rebuilt from SQLite, never an
error. Derived data only: deleting ``<store>.idx/`` is always safe.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from ragconf._fs import FILE_MODE, private_dir
from ragconf.errors import StoreError

__all__ = ["Generation", "IndexFileOptions", "IndexFiles"]

log = logging.getLogger(__name__)


class Generation(int):
    """A store generation (an int) and the id of the write that made it (``info.write_id``, '' before any write
    that records one): two states of one store file with the same generation number but other content (a copy
    restored, then written) differ in ``write_id``."""

    write_id: str

    def __new__(cls, value: int, write_id: str = "") -> Generation:
        gen = super().__new__(cls, value)
        gen.write_id = write_id
        return gen


@dataclass(frozen=True)
class IndexFileOptions:
    """``store.index_files`` settings: ``enabled`` (default true) keeps index files for stores of at least
    ``min_rows`` chunks (smaller ones rebuild in milliseconds)."""

    enabled: bool = True
    min_rows: int = 20_000

    @classmethod
    def parse(cls, raw: Any) -> IndexFileOptions:
        if raw is None:
            return cls()
        if isinstance(raw, IndexFileOptions):
            return raw
        if isinstance(raw, bool):
            return cls(enabled=raw)
        if not hasattr(raw, "items"):
            raise StoreError(f"store.index_files must be a mapping or true/false, got {type(raw).__name__}")
        known = [f.name for f in fields(cls)]
        values = dict(raw.items())
        for key in values:
            if key not in known:
                raise StoreError(f"unknown key store.index_files.{key}", hint=f"valid keys: {', '.join(known)}")
        opts = cls(**values)
        if not isinstance(opts.enabled, bool):
            raise StoreError(f"store.index_files.enabled must be true or false, got {opts.enabled!r}")
        if isinstance(opts.min_rows, bool) or not isinstance(opts.min_rows, int) or opts.min_rows < 0:
            raise StoreError(f"store.index_files.min_rows must be a non-negative integer, got {opts.min_rows!r}")
        return opts


def _bm25_consistent(parts: dict[str, np.ndarray], terms: list[str]) -> bool:
    """Whether saved BM25 arrays are a well-formed index (what :meth:`BM25Index.search` indexes with): sorted int64
    row ids, an integer term-major CSR (indptr from 0, non-decreasing, ending at the postings) whose postings name
    existing positions, finite float impacts, one entry per distinct term."""
    rowids, indptr, indices, data = parts["rowids"], parts["indptr"], parts["indices"], parts["data"]
    if rowids.dtype != np.int64 or rowids.ndim != 1 or (len(rowids) > 1 and not bool(np.all(rowids[1:] > rowids[:-1]))):
        return False
    if indptr.ndim != 1 or indptr.dtype.kind not in "iu" or len(indptr) != len(terms) + 1:
        return False
    if indptr[0] != 0 or indptr[-1] != len(indices) or not bool(np.all(np.diff(indptr) >= 0)):
        return False
    if indices.ndim != 1 or indices.dtype.kind not in "iu" or data.ndim != 1 or data.dtype.kind != "f":
        return False
    if len(data) != len(indices) or not bool(np.all(np.isfinite(data))):
        return False
    if len(indices) and (int(indices.min()) < 0 or int(indices.max()) >= len(rowids)):
        return False
    return len(set(terms)) == len(terms)


class IndexFiles:
    """The index files of one store (see module docstring). Methods never raise for a missing or bad file."""

    def __init__(self, store_path: Path, store_id: str, opts: IndexFileOptions) -> None:
        self.root = store_path.with_name(store_path.name + ".idx")
        self.store_id = store_id
        self.opts = opts

    def wanted(self, rows: int) -> bool:
        return self.opts.enabled and bool(self.store_id) and rows >= self.opts.min_rows

    # ----- layout --------------------------------------------------------------------------------------
    def _dir(self, generation: int) -> Path:
        return self.root / f"g{generation}"

    def _valid(self, generation: int) -> Path | None:
        """This generation's directory when its meta.json names this store, this generation and, for a
        :class:`Generation`, the write that made it (a plain int: an older generation of any write, the base of
        an incremental graph update, whose files are checked against each other)."""
        if not self.opts.enabled or not self.store_id:
            return None
        d = self._dir(generation)
        try:
            meta = json.loads((d / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if (
            not isinstance(meta, dict)
            or meta.get("store_id") != self.store_id
            or type(meta.get("generation")) is not int
            or meta.get("generation") != int(generation)
        ):
            return None
        if isinstance(generation, Generation) and meta.get("write_id", "") != generation.write_id:
            return None
        return d

    def _ensure(self, generation: int) -> Path | None:
        """This generation's directory, made whole (with its meta.json) by one rename; a directory of that name
        left by another store file or a killed writer is moved aside first. None when it cannot be written."""
        for _ in range(3):
            d = self._valid(generation)
            if d is not None:
                return d
            try:
                private_dir(self.root)
                tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=".tmp-"))
                write_id = getattr(generation, "write_id", "")
                meta = {"store_id": self.store_id, "generation": int(generation), "write_id": write_id}
                (tmp / "meta.json").write_text(json.dumps(meta))
                os.chmod(tmp / "meta.json", FILE_MODE)
                target = self._dir(generation)
                if target.exists() and self._valid(generation) is None:
                    with contextlib.suppress(OSError):
                        os.rename(target, Path(tempfile.mkdtemp(dir=self.root, prefix=".tmp-")) / "stale")
                try:
                    os.rename(tmp, target)
                except OSError:  # another process made it first
                    shutil.rmtree(tmp, ignore_errors=True)
            except OSError as exc:
                log.warning("index files: cannot write %s (%s); indexes are rebuilt in memory", self.root, exc)
                return None
        return self._valid(generation)

    def prune(self, keep: int) -> None:
        """Remove the directories of other generations than ``keep`` (a later one is another process's)."""
        try:
            entries = list(self.root.iterdir())
        except OSError:
            return
        gens = sorted((int(p.name[1:]), p) for p in entries if p.name.startswith("g") and p.name[1:].isdigit())
        # the newest older generation holding a graph stays until this one has its own: it is the base of an
        # incremental graph update
        base = None
        if not any(p.name.startswith("hnsw-") for p in self._dir(keep).glob("hnsw-*")):
            base = next((g for g, p in reversed(gens) if g < keep and any(p.glob("hnsw-*"))), None)
        for g, p in gens:
            if g < keep and g != base:
                shutil.rmtree(p, ignore_errors=True)
        for p in entries:
            name = p.name
            if name.startswith(".tmp-"):  # a writer killed mid-write; fresh temporaries belong to live writers
                try:
                    old = time.time() - p.stat().st_mtime > 3600
                except OSError:
                    continue
                if old or (p / "stale").exists():
                    if p.is_dir():
                        shutil.rmtree(p, ignore_errors=True)
                    else:
                        with contextlib.suppress(OSError):
                            p.unlink()

    def latest(self, before: int) -> int | None:
        """The newest valid generation below ``before`` (the base of an incremental graph update)."""
        try:
            gens = sorted(
                (int(p.name[1:]) for p in self.root.iterdir() if p.name.startswith("g") and p.name[1:].isdigit()),
                reverse=True,
            )
        except OSError:
            return None
        return next((g for g in gens if g < before and self._valid(g) is not None), None)

    @staticmethod
    def _write(path: Path, write: Callable[[Any], Any]) -> None:
        fd, tmp = tempfile.mkstemp(dir=path.parent.parent, prefix=".tmp-")
        try:
            os.fchmod(fd, FILE_MODE)
            with os.fdopen(fd, "wb") as f:
                write(f)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _save(self, generation: int, name: str, write: Callable[[Any], Any]) -> None:
        d = self._ensure(generation)
        if d is None:
            return
        try:
            self._write(d / name, write)
        except OSError as exc:
            log.warning("index files: cannot write %s (%s)", d / name, exc)
            return
        self.prune(generation)

    # ----- dense matrix --------------------------------------------------------------------------------
    def load_dense(self, generation: int, dim: int) -> tuple[np.ndarray, np.ndarray] | None:
        d = self._valid(generation)
        if d is None:
            return None
        try:
            rowids = np.load(d / "dense_rowids.npy", allow_pickle=False)
            matrix = np.load(d / "dense.npy", mmap_mode="r", allow_pickle=False)
        except Exception:  # whatever a damaged file makes numpy raise (ValueError, EOFError, ...): rebuild
            return None
        if (
            not isinstance(rowids, np.ndarray)
            or not isinstance(matrix, np.ndarray)
            or rowids.dtype != np.int64
            or rowids.ndim != 1
            or matrix.dtype != np.float32
            or matrix.shape != (len(rowids), dim)
            or (len(rowids) > 1 and not bool(np.all(rowids[1:] > rowids[:-1])))
        ):
            log.warning("index files: %s does not match the store; rebuilding", d / "dense.npy")
            return None
        return rowids, matrix

    def save_dense(self, generation: int, rowids: np.ndarray, matrix: np.ndarray) -> None:
        self._save(generation, "dense_rowids.npy", lambda f: np.save(f, rowids, allow_pickle=False))
        self._save(generation, "dense.npy", lambda f: np.save(f, matrix, allow_pickle=False))

    # ----- BM25 ----------------------------------------------------------------------------------------
    def load_bm25(self, generation: int) -> Any:
        from ragconf.store.bm25index import BM25Index

        d = self._valid(generation)
        if d is None:
            return None
        try:
            with np.load(d / "bm25.npz", allow_pickle=False) as z:
                parts = {k: z[k] for k in ("rowids", "indptr", "indices", "data", "vocab")}
            vocab = parts["vocab"]
            if vocab.dtype != np.uint8 or vocab.ndim != 1:
                raise ValueError("vocab")
            terms = bytes(vocab).decode("utf-8").split("\n") if len(vocab) else []
        except Exception:  # whatever a damaged file makes numpy/zipfile raise (BadZipFile, EOFError, ...): rebuild
            return None
        if not _bm25_consistent(parts, terms):
            log.warning("index files: %s does not match the store; rebuilding", d / "bm25.npz")
            return None
        vocab_ids = {t: i for i, t in enumerate(terms)}
        return BM25Index(parts["rowids"], vocab_ids, parts["indptr"], parts["indices"], parts["data"])

    def save_bm25(self, generation: int, index: Any) -> None:
        terms = "\n".join(index.vocab).encode("utf-8")  # dict order is term id order
        arrays = {
            "rowids": index.rowids,
            "indptr": index.indptr,
            "indices": index.indices,
            "data": index.data,
            "vocab": np.frombuffer(terms, dtype=np.uint8),
        }
        self._save(generation, "bm25.npz", lambda f: np.savez(f, **arrays))

    # ----- HNSW graph ----------------------------------------------------------------------------------
    @staticmethod
    def _graph_name(settings: str) -> str:
        return f"hnsw-{settings}.usearch"

    def graph_path(self, generation: int, settings: str) -> Path | None:
        d = self._valid(generation)
        if d is None:
            return None
        p = d / self._graph_name(settings)
        return p if p.is_file() else None

    def save_graph(self, generation: int, settings: str, save: Callable[[str], Any]) -> None:
        d = self._ensure(generation)
        if d is None:
            return
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-")
        os.close(fd)
        try:
            os.chmod(tmp, FILE_MODE)
            save(tmp)
            os.chmod(tmp, FILE_MODE)
            os.replace(tmp, d / self._graph_name(settings))
        except (OSError, RuntimeError, ValueError) as exc:
            log.warning("index files: cannot write the HNSW graph (%s)", exc)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            return
        self.prune(generation)
