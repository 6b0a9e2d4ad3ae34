"""The embedded store: one SQLite file (WAL) with FTS5 for BM25 and float32 vectors for dense retrieval.

- Durable: every write is one transaction; WAL survives a killed process with everything committed intact.
- BM25: terms analysed in Python (stopwords + Snowball stemming) are stored durably in an FTS5 table; queries
  run on an in-memory sparse index of FTS5's bm25() scores (k1=1.2, b=0.75) built from that table
  (:mod:`ragconf.store.bm25index`), so a query costs its terms' posting lists, not a ranking of every match.
- Dense: vectors live in SQLite and in an in-memory float32 matrix (rebuilt after any process commits);
  exact dot-product search, so results are exact, not approximate.
- Filters: Haystack filters compiled to SQL and applied *before* top-k in both retrieval paths: the allowed
  rows of a filter become a mask over each in-memory index, cached until the next write.
- Threads: one writer connection under a lock, one read-only connection per reading thread; each read sees
  one committed state and only the caches built from that same state (see :class:`SQLiteChunkStore`).
- Identified: ``PRAGMA application_id``/``user_version`` mark a ragconf store and its layout version; a
  corrupted, foreign or other-version file is a StoreError naming the path, never a traceback.
- Private: the file and its -wal/-shm are 0600, folders ragconf creates for it 0700.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sqlite3
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from haystack import Document
from haystack.document_stores.types import DuplicatePolicy

from ragconf._fs import private_dir, private_file
from ragconf.errors import StoreError
from ragconf.store.ann import AnnOptions, HnswIndex, usearch_available
from ragconf.store.bm25index import BM25Index
from ragconf.store.filters import to_sql
from ragconf.store.fusion import rrf
from ragconf.store.persist import Generation, IndexFileOptions, IndexFiles
from ragconf.store.text import analyze

__all__ = ["SQLiteChunkStore"]

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chunks (
    rowid INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    corpus TEXT NOT NULL DEFAULT '',
    doc_id TEXT,
    content TEXT,
    meta TEXT NOT NULL DEFAULT '{}',
    embedding BLOB
);
CREATE INDEX IF NOT EXISTS chunks_doc ON chunks(corpus, doc_id);
CREATE VIRTUAL TABLE IF NOT EXISTS fts USING fts5(terms, tokenize='unicode61 remove_diacritics 0');
CREATE TABLE IF NOT EXISTS docs (
    corpus TEXT NOT NULL,
    doc_id TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    chunks INTEGER NOT NULL,
    PRIMARY KEY (corpus, doc_id)
);
CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT);
"""


#: ``PRAGMA application_id`` of a ragconf store ("RAGC"): tells a ragconf store from any other SQLite file.
APPLICATION_ID = 0x52414743
#: ``PRAGMA user_version``: the store layout this version reads and writes.
SCHEMA_VERSION = 1
_TABLES = {"chunks", "fts", "docs", "info"}
_CHUNK_COLUMNS = {"rowid", "id", "corpus", "doc_id", "content", "meta", "embedding"}
_MAX_LIMIT = 2**62
_REBUILD = "delete the store file (and its -wal/-shm files) and re-run `ragconf ingest`"


def _file_id(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file at ``path``; None when there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _as_list(embedding: Any) -> list[float] | None:
    return None if embedding is None else [float(x) for x in embedding]


class _Snapshot:
    """In-memory state of one store generation: the dense matrix, the BM25 index and per-filter caches."""

    def __init__(self, generation: int) -> None:
        self.generation = generation
        self.write_id = getattr(generation, "write_id", "")
        self.matrix: np.ndarray | None = None
        self.rowids: np.ndarray | None = None
        self.bm25: BM25Index | None = None
        self.ann: HnswIndex | None = None
        self.masks: OrderedDict[str, np.ndarray] = OrderedDict()
        self.allowed: OrderedDict[str, np.ndarray] = OrderedDict()
        #: contiguous copies of the vectors of a filter's allowed rows (``store.ann.filter_cache_mb``)
        self.vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self.vector_bytes = 0


class SQLiteChunkStore:
    """Embedded, persistent chunk store (see module docstring).

    Thread-safe: writes go through one connection under a lock; each thread reads through its own read-only
    connection, and every read operation runs in one read transaction, so it sees one committed state. Every
    write transaction bumps a ``generation`` counter stored in the file; the in-memory caches (dense matrix,
    filter masks) belong to one generation and are only used by reads of that same generation, so a read never
    mixes cached and current data, whichever process wrote.
    """

    def __init__(
        self,
        path: str | Path,
        embedding_dim: int = 384,
        mask_cache: int = 32,
        ann: AnnOptions | Any = None,
        index_files: IndexFileOptions | Any = None,
    ) -> None:
        self.path = Path(path)
        self.embedding_dim = embedding_dim
        self.ann = AnnOptions.parse(ann)
        index_opts = IndexFileOptions.parse(index_files)
        self._lock = threading.RLock()
        self._local = threading.local()
        self._readers: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self._closed = False
        self._snap = _Snapshot(-1)
        self._mask_cache = mask_cache
        self._identity: tuple[tuple[int, int] | None, str | None] | None = None  # set once the file is open
        if self.path.is_dir():
            raise StoreError(f"store.path '{self.path}' is a directory", hint="store.path names the SQLite file")
        try:
            private_dir(self.path.parent)
            private_file(self.path)
            for suffix in ("-wal", "-shm"):
                side = self.path.with_name(self.path.name + suffix)
                if side.exists():
                    private_file(side)
        except OSError as exc:
            raise StoreError(f"cannot create store '{self.path}': {exc.strerror or exc}") from None
        with self._errors("open"):
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            try:
                self._db.execute("PRAGMA busy_timeout=10000")
                self._init_schema()
                store_id = self._store_id()
                self._files = IndexFiles(self.path, store_id, index_opts)
                #: what every read and write checks it still uses: this file (device, inode) and its store id
                self._abspath = Path(os.path.abspath(self.path))  # the path as given, whatever the cwd becomes
                self._identity = (_file_id(self._abspath), store_id or None)
            except BaseException:
                self._db.close()
                raise

    # ----- bookkeeping ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """SQLite failures (a corrupted or foreign file, a locked or read-only store) -> one StoreError."""
        try:
            yield
        except sqlite3.Error as exc:
            msg = str(exc) or type(exc).__name__
            if isinstance(exc, sqlite3.ProgrammingError) and "closed" in msg:
                raise StoreError(f"store '{self.path}' is closed") from None
            low = msg.lower()
            if "could not decode" in low:  # sqlite3 quotes the damaged text: never echo stored content
                msg, low = "stored text is not valid UTF-8", "corrupt"
            msg = msg.splitlines()[0][:200]
            if any(w in low for w in ("malformed", "not a database", "corrupt", "encrypted", "vtable constructor")):
                hint = f"the file is damaged or not a ragconf store: {_REBUILD}"
            elif "locked" in low or "busy" in low:
                hint = "another process holds a write lock on the store; retry when it is done"
            elif "readonly" in low or "read-only" in low or "unable to open" in low:
                hint = "check that the store file and its folder exist and are writable by you"
            elif "no such table" in low or "no such column" in low:
                hint = f"the file is not a ragconf store of this version: {_REBUILD}"
            else:
                hint = None
            raise StoreError(f"store '{self.path}': {what} failed: {msg}", hint=hint) from None

    def _init_schema(self) -> None:
        db = self._db
        app_id = int(db.execute("PRAGMA application_id").fetchone()[0])
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")}
        if app_id == APPLICATION_ID:
            if version != SCHEMA_VERSION:
                raise StoreError(
                    f"store '{self.path}' has layout version {version}; this ragconf reads version {SCHEMA_VERSION}",
                    hint=f"it was written by another ragconf version: {_REBUILD}, or use another store.path",
                )
        elif app_id != 0:
            raise StoreError(
                f"'{self.path}' is a SQLite database of another application (application_id {app_id:#x})",
                hint="point store.path at a file of its own",
            )
        elif tables:  # a store written before the store carried its application id, or a foreign database
            columns = {r[1] for r in db.execute("PRAGMA table_info(chunks)")} | {"rowid"}
            if not tables >= _TABLES or columns != _CHUNK_COLUMNS:
                raise StoreError(
                    f"'{self.path}' is a SQLite database but not a ragconf store (tables: "
                    f"{', '.join(sorted(t for t in tables if not t.startswith('fts_'))[:8])})",
                    hint="point store.path at a file of its own, or delete it to start an empty store",
                )
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        row = db.execute("SELECT value FROM info WHERE key='embedding_dim'").fetchone()
        if row is not None and str(row[0]) != str(self.embedding_dim):
            raise StoreError(
                f"store '{self.path}' holds {row[0]}-d vectors but the embedder makes {self.embedding_dim}-d ones",
                hint="use another store.path or delete the store and re-ingest",
            )
        has_generation = db.execute("SELECT 1 FROM info WHERE key='generation'").fetchone() is not None
        if row is None or not has_generation or app_id != APPLICATION_ID or version != SCHEMA_VERSION:
            with self._tx() as tx:  # a new (or adopted) store; an existing one is opened without writing
                tx.execute(f"PRAGMA application_id={APPLICATION_ID}")
                tx.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                tx.execute("INSERT OR IGNORE INTO info VALUES ('generation', '0')")
                tx.execute("INSERT OR IGNORE INTO info VALUES ('embedding_dim', ?)", (str(self.embedding_dim),))
        for suffix in ("-wal", "-shm"):  # SQLite gives them the database file's mode; make sure
            side = self.path.with_name(self.path.name + suffix)
            if side.exists():
                private_file(side)

    def _store_id(self) -> str:
        """This store file's random id (made once; names its index files). '' when it cannot be written."""
        row = self._db.execute("SELECT value FROM info WHERE key='store_id'").fetchone()
        if row is not None:
            return str(row[0])
        try:  # not a content change: no generation bump
            self._db.execute("INSERT OR IGNORE INTO info VALUES ('store_id', ?)", (uuid.uuid4().hex,))
        except sqlite3.Error:
            return ""
        row = self._db.execute("SELECT value FROM info WHERE key='store_id'").fetchone()
        return str(row[0]) if row else ""

    def _reader(self) -> sqlite3.Connection:
        """This thread's read-only connection (opened on first use; those of finished threads are closed)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        with self._lock:
            if self._closed:
                raise StoreError(f"store '{self.path}' is closed")
            alive = []
            for thread, other in self._readers:
                if thread.is_alive():
                    alive.append((thread, other))
                else:
                    other.close()
            uri = self.path.resolve().as_uri() + "?mode=ro"
            conn = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA busy_timeout=10000")
            alive.append((threading.current_thread(), conn))
            self._readers = alive
        self._local.conn = conn
        return conn

    @contextlib.contextmanager
    def _read(self, what: str) -> Iterator[tuple[sqlite3.Connection, Generation]]:
        """One read transaction on this thread's connection: (connection, generation it sees, with the id of the
        write that made it). The file must still be the one this store opened: a store deleted and made again
        (or another file moved) at the path is a StoreError, never a mix of two stores' rows and caches."""
        with self._errors(what):
            conn = self._reader()
            conn.execute("BEGIN")
            try:
                info = dict(
                    conn.execute("SELECT key, value FROM info WHERE key IN ('generation', 'store_id', 'write_id')")
                )
                self._check_identity(info.get("store_id"))
                yield conn, Generation(int(info.get("generation") or 0), str(info.get("write_id") or ""))
            finally:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")

    def _check_identity(self, store_id: Any) -> None:
        """StoreError unless the path still names the file this store opened, with the store id it had (a store
        opened without one, which it could not write, accepts the id another process gave it since)."""
        if self._identity is None:  # still opening
            return
        file_id, opened_id = self._identity
        if _file_id(self._abspath) != file_id or (opened_id is not None and store_id != opened_id):
            raise StoreError(
                f"store '{self.path}' was replaced by another file since it was opened",
                hint="reopen the store (restart the server or the command) to use the new file",
            )

    def _snapshot(self, generation: int) -> _Snapshot:
        """The cache of ``generation`` (call under the lock). A newer generation, or the same number made by
        another write (a restored copy written again), replaces the cache; a reader still on an older one gets a
        private, throwaway cache."""
        write_id = getattr(generation, "write_id", "")
        if generation == self._snap.generation and write_id == self._snap.write_id:
            return self._snap
        if generation >= self._snap.generation:
            self._snap = _Snapshot(generation)
            return self._snap
        return _Snapshot(generation)

    def _tx(self) -> Any:
        store = self

        class _Tx:
            def __enter__(s) -> sqlite3.Connection:  # noqa: N805
                if store._closed:
                    raise StoreError(f"store '{store.path}' is closed")
                store._db.execute("BEGIN IMMEDIATE")
                try:
                    row = store._db.execute("SELECT value FROM info WHERE key='store_id'").fetchone()
                    store._check_identity(row[0] if row else None)
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        store._db.execute("ROLLBACK")
                    raise
                return store._db

            def __exit__(s, et: Any, ev: Any, tb: Any) -> None:  # noqa: N805
                if et is None:
                    try:
                        store._db.execute("UPDATE info SET value = CAST(value AS INTEGER) + 1 WHERE key='generation'")
                        # a state with this generation number but other content (a restored copy written
                        # again) is told apart by the write that made it
                        store._db.execute("INSERT OR REPLACE INTO info VALUES ('write_id', lower(hex(randomblob(8))))")
                        store._db.execute("COMMIT")
                        return
                    except BaseException:
                        if store._db.in_transaction:
                            with contextlib.suppress(sqlite3.Error):
                                store._db.execute("ROLLBACK")
                        raise
                if store._db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        store._db.execute("ROLLBACK")

        return _Tx()

    # ----- writing -------------------------------------------------------------------------------------
    def _row(self, doc: Document, corpus: str | None = None) -> tuple[Any, ...]:
        """(id, corpus, doc_id, content, meta json, embedding blob, fts terms) of one chunk, checked."""
        meta = dict(doc.meta or {})
        corpus = corpus if corpus is not None else str(meta.get("corpus", ""))
        emb = None
        if doc.embedding is not None:
            vec = np.asarray(doc.embedding, dtype=np.float32)
            if vec.shape != (self.embedding_dim,):
                raise StoreError(
                    f"chunk {doc.id}: embedding has shape {vec.shape}, store expects ({self.embedding_dim},)"
                )
            norm = float(np.linalg.norm(vec))
            emb = (vec / norm if norm > 0 else vec).tobytes()
        try:
            meta_json = json.dumps(meta, ensure_ascii=False, default=str)
        except (TypeError, ValueError) as exc:
            raise StoreError(f"chunk {doc.id}: metadata is not JSON-serialisable ({exc})") from None
        title = str(meta.get("title") or "")
        terms = " ".join(analyze(f"{title} {doc.content or ''}"))
        return (doc.id, corpus, meta.get("doc_id"), doc.content, meta_json, emb, terms)

    def _insert(self, db: sqlite3.Connection, doc: Document, corpus: str | None = None) -> None:
        self._insert_many(db, [self._row(doc, corpus)])

    def _insert_many(self, db: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
        """Insert prepared chunk rows with consecutive row ids (we hold the write transaction), two statements
        for the whole batch."""
        if not rows:
            return
        start = int(db.execute("SELECT COALESCE(MAX(rowid), 0) FROM chunks").fetchone()[0]) + 1
        db.executemany(
            "INSERT INTO chunks (rowid, id, corpus, doc_id, content, meta, embedding) VALUES (?,?,?,?,?,?,?)",
            [(start + n, *r[:6]) for n, r in enumerate(rows)],
        )
        db.executemany("INSERT INTO fts (rowid, terms) VALUES (?, ?)", [(start + n, r[6]) for n, r in enumerate(rows)])

    def _delete_where(self, db: sqlite3.Connection, where: str, params: Iterable[Any]) -> int:
        params = list(params)
        db.execute(f"DELETE FROM fts WHERE rowid IN (SELECT rowid FROM chunks WHERE {where})", params)
        return db.execute(f"DELETE FROM chunks WHERE {where}", params).rowcount

    def write_documents(self, documents: list[Document], policy: DuplicatePolicy = DuplicatePolicy.NONE) -> int:
        """Haystack protocol. NONE/FAIL raise on an existing id, SKIP keeps it, OVERWRITE replaces it."""
        written = 0
        with self._lock, self._errors("write"), self._tx() as db:
            for doc in documents:
                exists = db.execute("SELECT 1 FROM chunks WHERE id=?", (doc.id,)).fetchone()
                if exists:
                    if policy == DuplicatePolicy.SKIP:
                        continue
                    if policy in (DuplicatePolicy.NONE, DuplicatePolicy.FAIL):
                        from haystack.document_stores.errors import DuplicateDocumentError

                        raise DuplicateDocumentError(f"document {doc.id} already exists")
                    self._delete_where(db, "id = ?", [doc.id])
                self._insert(db, doc)
                written += 1
        return written

    def delete_documents(self, document_ids: list[str]) -> None:
        with self._lock, self._errors("delete"), self._tx() as db:
            for i in range(0, len(document_ids), 500):
                part = document_ids[i : i + 500]
                self._delete_where(db, f"id IN ({','.join('?' * len(part))})", part)

    def replace_doc(self, corpus: str, doc_id: str, chunks: list[Document], content_hash: str | None = None) -> None:
        """Atomically replace every chunk of one source document."""
        h = content_hash or (chunks[0].meta.get("content_hash") if chunks else "") or ""
        self.replace_docs(corpus, [(doc_id, h, chunks)])

    def replace_docs(self, corpus: str, items: list[tuple[str, str, list[Document]]]) -> None:
        """Several :meth:`replace_doc` in one transaction: (doc_id, content_hash, chunks) each."""
        with self._lock, self._errors("write"), self._tx() as db:
            last = {doc_id: n for n, (doc_id, _, _) in enumerate(items)}  # a doc listed twice: the last one wins
            rows = [  # every chunk checked before anything is written
                self._row(doc, corpus)
                for n, (doc_id, _, chunks) in enumerate(items)
                if last[doc_id] == n
                for doc in chunks
            ]
            fresh = not db.execute("SELECT 1 FROM chunks WHERE corpus = ? LIMIT 1", (corpus,)).fetchone()
            for doc_id, h, chunks in items:
                if not fresh:  # a first load of a corpus has nothing to delete
                    self._delete_where(db, "corpus = ? AND doc_id = ?", [corpus, doc_id])
                db.execute("INSERT OR REPLACE INTO docs VALUES (?,?,?,?)", (corpus, doc_id, h, len(chunks)))
            self._insert_many(db, rows)

    def delete_docs(self, corpus: str, doc_ids: Iterable[str]) -> int:
        ids = list(doc_ids)
        removed = 0
        with self._lock, self._errors("delete"), self._tx() as db:
            for doc_id in ids:
                self._delete_where(db, "corpus = ? AND doc_id = ?", [corpus, doc_id])
                removed += db.execute("DELETE FROM docs WHERE corpus=? AND doc_id=?", (corpus, doc_id)).rowcount
        return removed

    def index_version(self) -> str:
        """The store's generation and the id of the write that made it: changed by every committed write (any
        process), so a cache keyed by it never serves what an ingest or a revocation changed, not even when a
        restored copy of the store reaches the same generation number again."""
        with self._read("reading the index version") as (_, generation):
            return f"{int(generation)}:{generation.write_id}"

    def doc_hashes(self, corpus: str) -> dict[str, str]:
        with self._read("reading document hashes") as (db, _):
            rows = db.execute("SELECT doc_id, content_hash FROM docs WHERE corpus=?", (corpus,)).fetchall()
        return {r[0]: r[1] for r in rows}

    # ----- reading -------------------------------------------------------------------------------------
    def count_documents(self) -> int:
        with self._read("count") as (db, _):
            return int(db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0])

    def _row_to_doc(self, row: tuple[Any, ...], score: float | None = None, with_embedding: bool = True) -> Document:
        _, cid, _, content, meta, emb = row
        try:
            embedding = np.frombuffer(emb, dtype=np.float32).tolist() if (emb is not None and with_embedding) else None
            meta_dict = json.loads(meta)
        except (TypeError, ValueError) as exc:
            raise StoreError(
                f"store '{self.path}': chunk {cid!r} is damaged ({type(exc).__name__}: {exc})",
                hint=f"the file is damaged: {_REBUILD}",
            ) from None
        return Document(id=cid, content=content, meta=meta_dict, embedding=embedding, score=score)

    def _where(self, filters: dict[str, Any] | None) -> tuple[str, list[Any]]:
        if not filters:
            return "1", []
        params: list[Any] = []
        return to_sql(filters, params), params

    def filter_documents(self, filters: dict[str, Any] | None = None) -> list[Document]:
        where, params = self._where(filters)
        with self._read("filtering documents") as (db, _):
            rows = db.execute(
                f"SELECT c.rowid, c.id, c.doc_id, c.content, c.meta, c.embedding FROM chunks c WHERE {where} "
                "ORDER BY c.rowid",
                params,
            ).fetchall()
        return [self._row_to_doc(r) for r in rows]

    def bm25_retrieval(self, query: str, *, filters: dict[str, Any] | None = None, top_k: int = 10) -> list[Document]:
        terms = sorted(set(analyze(query)))
        if not terms or top_k <= 0:
            return []
        top_k = min(int(top_k), _MAX_LIMIT)  # more than every row is every row
        if filters:
            self._where(filters)  # a malformed filter fails before any query
        with self._read("BM25 query") as (db, gen):
            chosen, scores = self._bm25_ranked(db, gen, terms, filters, top_k)
            rows = self._rows_by_rowid(db, chosen)
        return [
            self._row_to_doc(rows[rid], score=float(s), with_embedding=False)
            for rid, s in zip(chosen, scores, strict=True)
            if rid in rows
        ]

    def _bm25_ranked(
        self, db: sqlite3.Connection, gen: int, terms: list[str], filters: dict[str, Any] | None, top_k: int
    ) -> tuple[list[int], list[float]]:
        """(rowids, scores) of the BM25 top-k at ``gen``; the filter's allowed-row mask applies before top-k."""
        snap, index = self._load_bm25(db, gen)
        mask = self._mask(db, gen, snap, filters, index.rowids, "bm25") if filters else None
        pos, scores = index.search(terms, top_k, mask)
        return [int(r) for r in index.rowids[pos]], [float(s) for s in scores]

    def _load_bm25(self, db: sqlite3.Connection, gen: int) -> tuple[_Snapshot, BM25Index]:
        with self._lock:
            snap = self._snapshot(gen)
            if snap.bm25 is None:  # built under the lock: concurrent readers of a new generation wait for one
                snap.bm25 = self._files.load_bm25(gen)
                if snap.bm25 is not None:
                    return snap, snap.bm25
                snap.bm25 = BM25Index.build(db.execute("SELECT rowid, terms FROM fts ORDER BY rowid"))
                if self._files.wanted(snap.bm25.size):
                    self._files.save_bm25(gen, snap.bm25)
            return snap, snap.bm25

    def _rows_by_rowid(self, db: sqlite3.Connection, rowids: list[int]) -> dict[int, tuple[Any, ...]]:
        if not rowids:
            return {}
        return {
            r[0]: r
            for r in db.execute(
                "SELECT rowid, id, doc_id, content, meta, NULL FROM chunks "
                f"WHERE rowid IN ({','.join('?' * len(rowids))})",
                rowids,
            )
        }

    def _allowed(self, db: sqlite3.Connection, gen: int, filters: dict[str, Any]) -> np.ndarray:
        """Sorted row ids passing ``filters`` at generation ``gen``, cached per generation (a principal's filter
        repeats). ``db`` must be in a read transaction that sees ``gen``."""
        key = json.dumps(filters, sort_keys=True, default=str)
        with self._lock:
            snap = self._snapshot(gen)
            cached = snap.allowed.get(key)
            if cached is not None:
                snap.allowed.move_to_end(key)
                return cached
        where, params = self._where(filters)
        cached = np.fromiter(
            (r[0] for r in db.execute(f"SELECT c.rowid FROM chunks c WHERE {where} ORDER BY c.rowid", params)),
            dtype=np.int64,
        )
        with self._lock:
            snap.allowed[key] = cached
            if len(snap.allowed) > self._mask_cache:
                snap.allowed.popitem(last=False)
        return cached

    def _load_matrix(self, db: sqlite3.Connection, gen: int) -> tuple[_Snapshot, np.ndarray, np.ndarray]:
        with self._lock:
            snap = self._snapshot(gen)
            if snap.matrix is not None and snap.rowids is not None:
                return snap, snap.rowids, snap.matrix
            # built under the lock: concurrent readers of a new generation wait for one build
            saved = self._files.load_dense(gen, self.embedding_dim)
            if saved is not None and self._dense_matches(db, *saved):
                snap.rowids, snap.matrix = saved
                return snap, snap.rowids, snap.matrix
            ids: list[int] = []
            blobs: list[bytes] = []
            width = 4 * self.embedding_dim
            for rid, blob in db.execute(
                "SELECT rowid, embedding FROM chunks WHERE embedding IS NOT NULL ORDER BY rowid"
            ):
                if not isinstance(blob, bytes) or len(blob) != width:
                    raise StoreError(
                        f"store '{self.path}': the vector of row {rid} is damaged (not {self.embedding_dim} floats)",
                        hint=f"the file is damaged: {_REBUILD}",
                    )
                ids.append(rid)
                blobs.append(blob)
            snap.rowids = np.asarray(ids, dtype=np.int64)
            snap.matrix = (
                np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(ids), self.embedding_dim)
                if ids
                else np.zeros((0, self.embedding_dim), dtype=np.float32)
            )
            if self._files.wanted(len(ids)):
                self._files.save_dense(gen, snap.rowids, snap.matrix)
            return snap, snap.rowids, snap.matrix

    def _dense_matches(self, db: sqlite3.Connection, rowids: np.ndarray, matrix: np.ndarray) -> bool:
        """Whether a saved matrix agrees with the store on a sample of rows (32 spread over it, the last one
        included): the same vectors, byte for byte, and the same last row id. Cheap (a few row lookups, the
        mapped file is not read whole); a file that passed its own checks but holds other numbers is rebuilt."""
        last = db.execute("SELECT MAX(rowid) FROM chunks WHERE embedding IS NOT NULL").fetchone()[0]
        if len(rowids) == 0:
            return last is None
        if last is None or int(rowids[-1]) != int(last):
            return False
        sample = np.unique(np.linspace(0, len(rowids) - 1, num=min(32, len(rowids))).astype(np.int64))
        ids = [int(r) for r in rowids[sample]]
        stored = dict(
            db.execute(f"SELECT rowid, embedding FROM chunks WHERE rowid IN ({','.join('?' * len(ids))})", ids)
        )
        for pos, rid in zip(sample, ids, strict=True):
            blob = stored.get(rid)
            if not isinstance(blob, bytes) or blob != np.asarray(matrix[pos], dtype=np.float32).tobytes():
                log.warning("index files: the saved vectors of %s do not match the store; rebuilding", self.path)
                return False
        return True

    def _mask(
        self,
        db: sqlite3.Connection,
        gen: int,
        snap: _Snapshot,
        filters: dict[str, Any],
        rowids: np.ndarray,
        kind: str,
    ) -> np.ndarray:
        """Bool per position of ``rowids`` (the sorted rows of one in-memory index, ``kind``): passes ``filters``."""
        key = kind + ":" + json.dumps(filters, sort_keys=True, default=str)
        with self._lock:
            cached = snap.masks.get(key)
            if cached is not None:
                snap.masks.move_to_end(key)
                return cached
        allowed = self._allowed(db, gen, filters)
        pos = np.searchsorted(allowed, rowids)
        mask = allowed[np.minimum(pos, len(allowed) - 1)] == rowids if len(allowed) else np.zeros(len(rowids), bool)
        with self._lock:
            snap.masks[key] = mask
            if len(snap.masks) > self._mask_cache:
                snap.masks.popitem(last=False)
        return mask

    def embedding_retrieval(
        self, query_embedding: list[float], *, filters: dict[str, Any] | None = None, top_k: int = 10
    ) -> list[Document]:
        q = self._query_vector(query_embedding)
        if filters:
            self._where(filters)  # a malformed filter fails before any query
        if top_k <= 0:
            return []
        with self._read("dense query") as (db, gen):
            chosen, scores = self._dense_ranked(db, gen, q, filters, top_k)
            by_id = self._rows_by_rowid(db, chosen)
        return [
            self._row_to_doc(by_id[rid], score=s, with_embedding=False)
            for rid, s in zip(chosen, scores, strict=True)
            if rid in by_id
        ]

    def _query_vector(self, query_embedding: Any) -> np.ndarray:
        try:
            q = np.asarray(query_embedding, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise StoreError(f"query embedding is not a vector of numbers ({exc})") from None
        if q.shape != (self.embedding_dim,):
            raise StoreError(f"query embedding has shape {q.shape}, store expects ({self.embedding_dim},)")
        return q

    def _dense_ranked(
        self, db: sqlite3.Connection, gen: int, q: np.ndarray, filters: dict[str, Any] | None, top_k: int
    ) -> tuple[list[int], list[float]]:
        """(rowids, exact cosine scores) of the dense top-k at ``gen``, filter applied before top-k.

        Exact brute force for a small store, without usearch, or when the filter is selective (then only over
        the allowed rows); otherwise the HNSW graph proposes candidates (more under a filter), masked by the
        filter and re-scored exactly; too few allowed candidates fall back to exact search."""
        snap, rowids, matrix = self._load_matrix(db, gen)
        n = len(rowids)
        if n == 0:
            return [], []
        mask = self._mask(db, gen, snap, filters, rowids, "dense") if filters else None
        n_ok = n if mask is None else int(np.count_nonzero(mask))
        k = min(top_k, n_ok)
        if k == 0:
            return [], []
        ann = None if self.ann.exact(n, n_ok) else self._ann_for(gen, snap, rowids, matrix)
        pos: np.ndarray | None = None
        if ann is not None:  # outside the lock: usearch and numpy release the GIL
            keys = ann.search(q, self.ann.want(k, n, n_ok))
            cand = np.minimum(np.searchsorted(rowids, keys), n - 1)
            cand = cand[rowids[cand] == keys]  # the graph holds exactly these rows; be safe anyway
            if mask is not None:
                cand = cand[mask[cand]]
            if len(cand) >= k:
                pos = cand
        vectors = matrix
        if pos is None and mask is not None and n_ok * 4 < n:  # selective: score only the allowed rows
            pos, vectors = self._allowed_vectors(snap, filters or {}, mask, matrix)
        elif pos is not None:
            vectors = matrix[pos]
        # einsum, not BLAS: a threaded gemv spins on a loaded machine (12 ms for 3k rows seen on 2 busy cores)
        scores = np.einsum("ij,j->i", vectors, q)
        if mask is not None and pos is None:
            scores = np.where(mask, scores, -np.inf)
        top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
        top = top[np.lexsort((top if pos is None else pos[top], -scores[top]))]  # ties by ascending rowid
        top = top[np.isfinite(scores[top])]
        at = top if pos is None else pos[top]
        return [int(r) for r in rowids[at]], [float(x) for x in scores[top]]

    def _allowed_vectors(
        self, snap: _Snapshot, filters: dict[str, Any], mask: np.ndarray, matrix: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(positions, their vectors) of the rows ``mask`` allows. The vectors are a contiguous copy kept for
        the next query with the same filter while ``store.ann.filter_cache_mb`` allows (a gather of scattered
        rows from a large matrix costs several times the scoring)."""
        key = json.dumps(filters, sort_keys=True, default=str)
        with self._lock:
            pos = snap.masks.get("dense-pos:" + key)
            if pos is None:
                pos = np.flatnonzero(mask)
                snap.masks["dense-pos:" + key] = pos
                if len(snap.masks) > self._mask_cache:
                    snap.masks.popitem(last=False)
            cached = snap.vectors.get(key)
            if cached is not None and len(cached) == len(pos):
                snap.vectors.move_to_end(key)
                return pos, cached
        vectors = matrix[pos]  # outside the lock: other queries go on meanwhile
        budget = self.ann.filter_cache_mb * 1024 * 1024
        if 0 < vectors.nbytes <= budget:
            with self._lock:
                if key not in snap.vectors:
                    snap.vectors[key] = vectors
                    snap.vector_bytes += vectors.nbytes
                    while snap.vector_bytes > budget:
                        snap.vector_bytes -= snap.vectors.popitem(last=False)[1].nbytes
        return pos, vectors

    def _ann_for(self, gen: int, snap: _Snapshot, rowids: np.ndarray, matrix: np.ndarray) -> HnswIndex | None:
        """This generation's HNSW graph (loaded from the index files, updated from the previous generation's,
        or built) on first use; None when search should be exact."""
        opts = self.ann
        if opts.mode == "off" or len(matrix) < opts.min_rows or not usearch_available():
            return None
        with self._lock:  # made once per generation; concurrent readers wait for it
            if snap.ann is None:
                snap.ann = self._graph(gen, rowids, matrix)
            return snap.ann

    def _graph(self, gen: int, rowids: np.ndarray, matrix: np.ndarray, progress: bool = False) -> HnswIndex:
        opts, files = self.ann, self._files
        settings = HnswIndex.settings(opts, self.embedding_dim)
        path = files.graph_path(gen, settings)
        if path is not None:
            loaded = HnswIndex.load(str(path), opts, rowids, matrix, view=True)
            if loaded is not None:
                return loaded
        graph = self._updated_graph(gen, settings, rowids, matrix)
        if graph is None:
            graph = HnswIndex.build(rowids, matrix, opts, progress=progress)
        if files.wanted(len(rowids)):
            files.save_graph(gen, settings, graph.save)
        return graph

    def _updated_graph(self, gen: int, settings: str, rowids: np.ndarray, matrix: np.ndarray) -> HnswIndex | None:
        """The newest saved older generation's graph with the rows changed since removed and added, when at
        most half of the rows changed; None otherwise."""
        files = self._files
        base = files.latest(gen)
        path = files.graph_path(base, settings) if base is not None else None
        old = files.load_dense(base, self.embedding_dim) if base is not None else None
        if path is None or old is None:
            return None
        old_rowids, old_matrix = old
        graph = HnswIndex.load(str(path), self.ann, old_rowids, old_matrix, view=False)
        if graph is None:
            return None
        kept = np.intersect1d(old_rowids, rowids, assume_unique=True)
        pos_old = np.searchsorted(old_rowids, kept)
        pos_new = np.searchsorted(rowids, kept)
        changed = np.zeros(len(kept), dtype=bool)
        for i in range(0, len(kept), 65_536):  # a row id reused by a later insert holds another vector
            sl = slice(i, i + 65_536)
            changed[sl] = np.any(old_matrix[pos_old[sl]] != matrix[pos_new[sl]], axis=1)
        removed = np.union1d(np.setdiff1d(old_rowids, rowids, assume_unique=True), kept[changed])
        added = np.union1d(np.setdiff1d(rowids, old_rowids, assume_unique=True), kept[changed])
        if len(removed) + len(added) > len(rowids) // 2:
            return None
        return graph.update(removed, added, matrix[np.searchsorted(rowids, added)])

    def warm(self, progress: bool = False) -> dict[str, float]:
        """Make (and, for a large store, save as index files) the current generation's BM25 index, dense matrix
        and HNSW graph, so the first query does not pay for them; seconds per part. Ingest calls it."""
        import time

        took: dict[str, float] = {}
        with self._read("preparing indexes") as (db, gen):
            t0 = time.perf_counter()
            self._load_bm25(db, gen)
            took["bm25"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            snap, rowids, matrix = self._load_matrix(db, gen)
            took["dense"] = time.perf_counter() - t0
            opts = self.ann
            if opts.mode != "off" and len(matrix) >= opts.min_rows and usearch_available():
                t0 = time.perf_counter()
                with self._lock:
                    if snap.ann is None:
                        snap.ann = self._graph(gen, rowids, matrix, progress=progress)
                took["hnsw"] = time.perf_counter() - t0
        return took

    def hybrid_retrieval(
        self,
        query: str,
        query_embedding: list[float],
        *,
        filters: dict[str, Any] | None = None,
        top_k: int = 10,
        candidates: int = 100,
        weights: list[float] | None = None,
    ) -> list[Document]:
        """BM25 top-``candidates`` + dense top-``candidates`` fused by reciprocal-rank fusion, in one read
        transaction, with ``filters`` applied before top-k in both branches; only the fused top-k chunks are
        read and built. Same ranking and scores as the two retrievers joined by Haystack's RRF joiner."""
        q = self._query_vector(query_embedding)
        if filters:
            self._where(filters)  # a malformed filter fails before any query
        if top_k <= 0 or candidates <= 0:
            return []
        terms = sorted(set(analyze(query)))
        with self._read("hybrid query") as (db, gen):
            lexical = self._bm25_ranked(db, gen, terms, filters, candidates)[0] if terms else []
            dense = self._dense_ranked(db, gen, q, filters, candidates)[0]
            fused = rrf([lexical, dense], top_k, weights)
            rows = self._rows_by_rowid(db, [rid for rid, _ in fused])
        return [self._row_to_doc(rows[rid], score=sc, with_embedding=False) for rid, sc in fused if rid in rows]

    def fingerprint(self) -> dict[str, Any]:
        h = hashlib.sha256()
        with self._read("fingerprint") as (db, _):
            for cid, meta in db.execute("SELECT id, json_extract(meta, '$.content_hash') FROM chunks ORDER BY id"):
                h.update(f"{cid}:{meta}\n".encode())
            docs = db.execute("SELECT COUNT(*) FROM docs").fetchone()[0]
            chunks = db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
        return {"documents": int(docs), "chunks": int(chunks), "content_hash": h.hexdigest()}

    def close(self) -> None:
        """Close the writer and every thread's reader connection (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for _, conn in self._readers:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._readers = []
            self._snap = _Snapshot(-1)
            with contextlib.suppress(sqlite3.Error):
                self._db.close()

    # ----- Haystack serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "ragconf.store.sqlite.SQLiteChunkStore",
            "init_parameters": {"path": str(self.path), "embedding_dim": self.embedding_dim},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SQLiteChunkStore:
        return cls(**data["init_parameters"])
