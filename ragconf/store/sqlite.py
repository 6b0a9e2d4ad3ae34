"""The embedded store: one SQLite file (WAL) with FTS5 for BM25 and float32 vectors for dense retrieval.

- Durable: every write is one transaction; WAL survives a killed process with everything committed intact.
- BM25: FTS5's bm25() (k1=1.2, b=0.75) over terms analysed in Python (stopwords + Snowball stemming).
- Dense: vectors live in SQLite and in an in-memory float32 matrix (reloaded when any connection commits);
  exact dot-product search, so results are exact, not approximate.
- Filters: Haystack filters compiled to SQL and applied *before* top-k in both retrieval paths; for dense
  search the allowed-row mask of a filter is cached until the next write.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from haystack import Document
from haystack.document_stores.types import DuplicatePolicy

from ragconf.errors import StoreError
from ragconf.store.filters import to_sql
from ragconf.store.text import analyze

__all__ = ["SQLiteChunkStore"]

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


def _as_list(embedding: Any) -> list[float] | None:
    return None if embedding is None else [float(x) for x in embedding]


class SQLiteChunkStore:
    """Embedded, persistent chunk store (see module docstring)."""

    def __init__(self, path: str | Path, embedding_dim: int = 384, mask_cache: int = 32) -> None:
        self.path = Path(path)
        self.embedding_dim = embedding_dim
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=10000")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"cannot open store '{self.path}': {exc}", hint="delete the file to rebuild it with `ragconf ingest`"
            ) from None
        self._check_dim()
        self._lock = threading.RLock()
        self._matrix: np.ndarray | None = None
        self._rowids: np.ndarray | None = None
        self._version: tuple[int, int] | None = None
        self._writes = 0
        self._masks: OrderedDict[str, np.ndarray] = OrderedDict()
        self._allowed_cache: OrderedDict[str, frozenset[int]] = OrderedDict()
        self._count: int | None = None
        self._mask_cache = mask_cache

    # ----- bookkeeping ---------------------------------------------------------------------------------
    def _check_dim(self) -> None:
        row = self._db.execute("SELECT value FROM info WHERE key='embedding_dim'").fetchone()
        if row is None:
            self._db.execute("INSERT OR REPLACE INTO info VALUES ('embedding_dim', ?)", (str(self.embedding_dim),))
        elif int(row[0]) != self.embedding_dim:
            raise StoreError(
                f"store '{self.path}' holds {row[0]}-d vectors but the embedder makes {self.embedding_dim}-d ones",
                hint="use another store.path or delete the store and re-ingest",
            )

    def _state(self) -> tuple[int, int]:
        return (self._db.execute("PRAGMA data_version").fetchone()[0], self._writes)

    def _fresh(self) -> None:
        """Drop in-memory caches when this or another connection committed since they were built."""
        state = self._state()
        if state != self._version:
            self._matrix = None
            self._rowids = None
            self._masks.clear()
            self._allowed_cache.clear()
            self._count = None
            self._version = state

    def _tx(self) -> Any:
        class _Tx:
            def __init__(s, db: sqlite3.Connection) -> None:  # noqa: N805
                s.db = db

            def __enter__(s) -> sqlite3.Connection:  # noqa: N805
                s.db.execute("BEGIN IMMEDIATE")
                return s.db

            def __exit__(s, et: Any, ev: Any, tb: Any) -> None:  # noqa: N805
                s.db.execute("ROLLBACK" if et else "COMMIT")

        return _Tx(self._db)

    # ----- writing -------------------------------------------------------------------------------------
    def _insert(self, db: sqlite3.Connection, doc: Document, corpus: str | None = None) -> None:
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
        cur = db.execute(
            "INSERT INTO chunks (id, corpus, doc_id, content, meta, embedding) VALUES (?,?,?,?,?,?)",
            (doc.id, corpus, meta.get("doc_id"), doc.content, meta_json, emb),
        )
        title = str(meta.get("title") or "")
        terms = " ".join(analyze(f"{title} {doc.content or ''}"))
        db.execute("INSERT INTO fts (rowid, terms) VALUES (?, ?)", (cur.lastrowid, terms))

    def _delete_where(self, db: sqlite3.Connection, where: str, params: Iterable[Any]) -> int:
        params = list(params)
        db.execute(f"DELETE FROM fts WHERE rowid IN (SELECT rowid FROM chunks WHERE {where})", params)
        return db.execute(f"DELETE FROM chunks WHERE {where}", params).rowcount

    def write_documents(self, documents: list[Document], policy: DuplicatePolicy = DuplicatePolicy.NONE) -> int:
        """Haystack protocol. NONE/FAIL raise on an existing id, SKIP keeps it, OVERWRITE replaces it."""
        written = 0
        with self._lock, self._tx() as db:
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
            self._writes += 1
        return written

    def delete_documents(self, document_ids: list[str]) -> None:
        with self._lock, self._tx() as db:
            for i in range(0, len(document_ids), 500):
                part = document_ids[i : i + 500]
                self._delete_where(db, f"id IN ({','.join('?' * len(part))})", part)
            self._writes += 1

    def replace_doc(self, corpus: str, doc_id: str, chunks: list[Document], content_hash: str | None = None) -> None:
        """Atomically replace every chunk of one source document."""
        h = content_hash or (chunks[0].meta.get("content_hash") if chunks else "") or ""
        with self._lock, self._tx() as db:
            self._delete_where(db, "corpus = ? AND doc_id = ?", [corpus, doc_id])
            for doc in chunks:
                self._insert(db, doc, corpus)
            db.execute("INSERT OR REPLACE INTO docs VALUES (?,?,?,?)", (corpus, doc_id, h, len(chunks)))
            self._writes += 1

    def replace_docs(self, corpus: str, items: list[tuple[str, str, list[Document]]]) -> None:
        """Several :meth:`replace_doc` in one transaction: (doc_id, content_hash, chunks) each."""
        with self._lock, self._tx() as db:
            for doc_id, h, chunks in items:
                self._delete_where(db, "corpus = ? AND doc_id = ?", [corpus, doc_id])
                for doc in chunks:
                    self._insert(db, doc, corpus)
                db.execute("INSERT OR REPLACE INTO docs VALUES (?,?,?,?)", (corpus, doc_id, h, len(chunks)))
            self._writes += 1

    def delete_docs(self, corpus: str, doc_ids: Iterable[str]) -> int:
        ids = list(doc_ids)
        removed = 0
        with self._lock, self._tx() as db:
            for doc_id in ids:
                self._delete_where(db, "corpus = ? AND doc_id = ?", [corpus, doc_id])
                removed += db.execute("DELETE FROM docs WHERE corpus=? AND doc_id=?", (corpus, doc_id)).rowcount
            self._writes += 1
        return removed

    def doc_hashes(self, corpus: str) -> dict[str, str]:
        rows = self._db.execute("SELECT doc_id, content_hash FROM docs WHERE corpus=?", (corpus,)).fetchall()
        return {r[0]: r[1] for r in rows}

    # ----- reading -------------------------------------------------------------------------------------
    def count_documents(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0])

    def _row_to_doc(self, row: tuple[Any, ...], score: float | None = None, with_embedding: bool = True) -> Document:
        _, cid, _, content, meta, emb = row
        embedding = np.frombuffer(emb, dtype=np.float32).tolist() if (emb is not None and with_embedding) else None
        return Document(id=cid, content=content, meta=json.loads(meta), embedding=embedding, score=score)

    def _where(self, filters: dict[str, Any] | None) -> tuple[str, list[Any]]:
        if not filters:
            return "1", []
        params: list[Any] = []
        return to_sql(filters, params), params

    def filter_documents(self, filters: dict[str, Any] | None = None) -> list[Document]:
        where, params = self._where(filters)
        try:
            rows = self._db.execute(
                f"SELECT c.rowid, c.id, c.doc_id, c.content, c.meta, c.embedding FROM chunks c WHERE {where} "
                "ORDER BY c.rowid",
                params,
            ).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"invalid filter: {exc}") from None
        return [self._row_to_doc(r) for r in rows]

    def bm25_retrieval(self, query: str, *, filters: dict[str, Any] | None = None, top_k: int = 10) -> list[Document]:
        terms = sorted(set(analyze(query)))
        if not terms or top_k <= 0:
            return []
        match = " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)
        with self._lock:
            self._fresh()
            try:
                if not filters:
                    ranked = self._db.execute(
                        "SELECT rowid, rank FROM fts WHERE fts MATCH ? ORDER BY rank LIMIT ?", (match, top_k)
                    ).fetchall()
                else:
                    ranked = self._bm25_filtered(match, filters, top_k)
            except sqlite3.Error as exc:
                raise StoreError(f"BM25 query failed: {exc}") from None
            rows = self._rows_by_rowid([r[0] for r in ranked])
        return [
            self._row_to_doc(rows[rid], score=-float(rank), with_embedding=False) for rid, rank in ranked if rid in rows
        ]

    def _bm25_filtered(self, match: str, filters: dict[str, Any], top_k: int) -> list[tuple[int, float]]:
        """Exact filtered top-k: the allowed rows among the global top-N are the filtered top-k when there are
        k of them; otherwise the filter runs inside the SQL query over every match."""
        allowed = self._allowed(filters)
        if not allowed:
            return []
        if self._count is None:
            self._count = self.count_documents()
        total = max(1, self._count)
        # read enough of the global ranking to expect top_k allowed rows (3x margin), then verify
        n = max(50, int(3 * top_k * total / len(allowed)))
        if n <= 20_000:
            ranked = self._db.execute(
                "SELECT rowid, rank FROM fts WHERE fts MATCH ? ORDER BY rank LIMIT ?", (match, n)
            ).fetchall()
            hits = [r for r in ranked if r[0] in allowed]
            if len(hits) >= top_k or len(ranked) < n:
                return hits[:top_k]
        where, params = self._where(filters)
        return self._db.execute(
            "SELECT fts.rowid, fts.rank FROM fts JOIN chunks c ON c.rowid = fts.rowid "
            f"WHERE fts MATCH ? AND {where} ORDER BY fts.rank LIMIT ?",
            [match, *params, top_k],
        ).fetchall()

    def _rows_by_rowid(self, rowids: list[int]) -> dict[int, tuple[Any, ...]]:
        if not rowids:
            return {}
        return {
            r[0]: r
            for r in self._db.execute(
                "SELECT rowid, id, doc_id, content, meta, NULL FROM chunks "
                f"WHERE rowid IN ({','.join('?' * len(rowids))})",
                rowids,
            )
        }

    def _allowed(self, filters: dict[str, Any]) -> frozenset[int]:
        """Row ids passing ``filters``, cached until the next write (a principal's filter repeats)."""
        key = json.dumps(filters, sort_keys=True, default=str)
        cached = self._allowed_cache.get(key)
        if cached is not None:
            self._allowed_cache.move_to_end(key)
            return cached
        where, params = self._where(filters)
        try:
            allowed = frozenset(r[0] for r in self._db.execute(f"SELECT c.rowid FROM chunks c WHERE {where}", params))
        except sqlite3.Error as exc:
            raise StoreError(f"invalid filter: {exc}") from None
        self._allowed_cache[key] = allowed
        if len(self._allowed_cache) > self._mask_cache:
            self._allowed_cache.popitem(last=False)
        return allowed

    def _load_matrix(self) -> tuple[np.ndarray, np.ndarray]:
        self._fresh()
        if self._matrix is None or self._rowids is None:
            rows = self._db.execute("SELECT rowid, embedding FROM chunks WHERE embedding IS NOT NULL ORDER BY rowid")
            ids: list[int] = []
            blobs: list[bytes] = []
            for rid, blob in rows:
                ids.append(rid)
                blobs.append(blob)
            self._rowids = np.asarray(ids, dtype=np.int64)
            self._matrix = (
                np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(ids), self.embedding_dim)
                if ids
                else np.zeros((0, self.embedding_dim), dtype=np.float32)
            )
        return self._rowids, self._matrix

    def _mask(self, filters: dict[str, Any], rowids: np.ndarray) -> np.ndarray:
        key = json.dumps(filters, sort_keys=True, default=str)
        cached = self._masks.get(key)
        if cached is not None:
            self._masks.move_to_end(key)
            return cached
        allowed = np.fromiter(self._allowed(filters), dtype=np.int64)
        mask = np.isin(rowids, allowed)
        self._masks[key] = mask
        if len(self._masks) > self._mask_cache:
            self._masks.popitem(last=False)
        return mask

    def embedding_retrieval(
        self, query_embedding: list[float], *, filters: dict[str, Any] | None = None, top_k: int = 10
    ) -> list[Document]:
        q = np.asarray(query_embedding, dtype=np.float32)
        if q.shape != (self.embedding_dim,):
            raise StoreError(f"query embedding has shape {q.shape}, store expects ({self.embedding_dim},)")
        with self._lock:
            rowids, matrix = self._load_matrix()
            if len(rowids) == 0 or top_k <= 0:
                return []
            scores = matrix @ q
            if filters:
                mask = self._mask(filters, rowids)
                scores = np.where(mask, scores, -np.inf)
                n_ok = int(mask.sum())
            else:
                n_ok = len(rowids)
            k = min(top_k, n_ok)
            if k == 0:
                return []
            top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
            top = top[np.argsort(-scores[top], kind="stable")]
            top = top[np.isfinite(scores[top])]
            chosen = [int(rowids[i]) for i in top]
            by_id = self._rows_by_rowid(chosen)
        return [
            self._row_to_doc(by_id[rid], score=float(scores[i]), with_embedding=False)
            for rid, i in zip(chosen, top, strict=True)
            if rid in by_id
        ]

    def fingerprint(self) -> dict[str, Any]:
        h = hashlib.sha256()
        for cid, meta in self._db.execute("SELECT id, json_extract(meta, '$.content_hash') FROM chunks ORDER BY id"):
            h.update(f"{cid}:{meta}\n".encode())
        docs = self._db.execute("SELECT COUNT(*) FROM docs").fetchone()[0]
        return {"documents": int(docs), "chunks": self.count_documents(), "content_hash": h.hexdigest()}

    def close(self) -> None:
        try:
            self._db.close()
        except sqlite3.Error:
            pass

    # ----- Haystack serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "ragconf.store.sqlite.SQLiteChunkStore",
            "init_parameters": {"path": str(self.path), "embedding_dim": self.embedding_dim},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SQLiteChunkStore:
        return cls(**data["init_parameters"])
