"""Incremental, idempotent ingestion: unchanged documents skipped, changed replaced, deleted removed,
duplicates collapsed; committed in batches so an interrupted run loses nothing already written.

Revocation comes first: before anything is written, every indexed document whose source is gone is deleted,
and every one whose new version could not be read or validated (or lost its access metadata) is withdrawn.
An index never keeps serving an old version with its old access fields. Only a source root that cannot be
listed at all stops the run, before any change (:class:`~ragconf.ingest.sources.SourceUnavailable`)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ragconf.errors import CompileError, IngestError
from ragconf.ingest.sources import SourceDocument, SourceError, iter_source

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["IngestBusy", "IngestSummary", "ingest"]


class IngestBusy(IngestError):
    """Another ingest holds the store's ingest lock (a runtime condition: exit 1)."""

    exit_code = 1


@dataclass
class IngestSummary:
    added: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    duplicates: int = 0
    chunks_written: int = 0
    documents_seen: int = 0
    seconds: float = 0.0
    embed_seconds: float = 0.0
    #: Time spent preparing the store's search indexes (BM25, vectors, HNSW graph) for the new content.
    index_seconds: float = 0.0
    #: Items not indexed because they could not be read or their access metadata is invalid.
    errors: list[SourceError] = field(default_factory=list)
    #: Items not indexed because they carry no access metadata and the corpus declares no defaults.
    quarantined: list[SourceError] = field(default_factory=list)
    #: Ids of indexed documents removed because their new version was rejected or quarantined.
    withdrawn: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (what `ingest --json` prints)."""
        data = asdict(self)
        data["errors"] = [str(e) for e in self.errors]
        data["quarantined"] = [str(e) for e in self.quarantined]
        data["withdrawn"] = list(self.withdrawn)
        return data

    def line(self, corpus: str) -> str:
        """One human line with every count."""
        return (
            f"ingested corpus '{corpus}': {self.added} added, {self.updated} updated, {self.deleted} deleted, "
            f"{self.unchanged} unchanged, {self.duplicates} duplicates, {len(self.errors)} rejected, "
            f"{len(self.quarantined)} quarantined, {len(self.withdrawn)} withdrawn; "
            f"{self.chunks_written} chunks in {self.seconds:.1f}s"
        )


def ingest(
    corpus_spec: Any,
    store: Any,
    embed_fn: Callable[[list[str]], Any],
    *,
    corpus_name: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    batch_docs: int = 64,
    source_of: Callable[[str], str] | None = None,
) -> IngestSummary:
    """Sync the store with the corpus sources: revoke first (deleted and withdrawn documents), then run the
    indexing pipeline (``corpus.indexing`` or the default) and write what passes the writer's access checks.

    The pipeline is built (and warmed up) before anything is read: a configuration mistake changes nothing."""
    from ragconf.ingest.pipeline import build_indexing

    pipeline = build_indexing(corpus_spec, source_of=source_of)
    with _ingest_lock(store):
        return _ingest(corpus_spec, store, embed_fn, pipeline, corpus_name, progress, batch_docs)


@contextlib.contextmanager
def _ingest_lock(store: Any) -> Iterator[None]:
    """One ingest at a time per store, across processes: a second one would read the index before the first
    wrote it and could miss a revocation. Stores without a local file (Elasticsearch) are not locked."""
    path = getattr(store, "path", None)
    if path is None or fcntl is None:
        yield
        return
    lock = Path(str(path) + ".ingest.lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise IngestBusy(
                f"another ingest into {path} is running; nothing was changed", hint="wait for it and run again"
            ) from None
        yield
    finally:
        os.close(fd)


def _ingest(
    corpus_spec: Any,
    store: Any,
    embed_fn: Callable[[list[str]], Any],
    pipeline: Any,
    corpus_name: str | None,
    progress: Callable[[int, int], None] | None,
    batch_docs: int,
) -> IngestSummary:
    from ragconf.ingest.components import embedding_text
    from ragconf.ingest.pipeline import finalize_chunks

    start = time.perf_counter()
    corpus = corpus_name or corpus_spec.name
    summary = IngestSummary()
    scan: list[SourceError] = []
    by_id: dict[str, SourceDocument] = {}
    conflicts: set[str] = set()
    # the whole scan happens before any change: a source root that cannot be listed raises here
    for source in corpus_spec.sources:
        for doc in iter_source(source, corpus_spec.access, scan):
            summary.documents_seen += 1
            first = by_id.get(doc.doc_id)
            if first is None:
                by_id[doc.doc_id] = doc
            elif first.content_hash == doc.content_hash:  # the very same document twice: keep one
                summary.duplicates += 1
            else:  # one id, two different documents (or access fields): which one is meant is unknowable
                conflicts.add(doc.doc_id)
                scan.append(
                    SourceError(
                        doc.origin or doc.source,
                        f"the id '{doc.doc_id}' also comes from {first.origin or first.source} with other content or "
                        "access "
                        "fields; neither is indexed",
                        doc.doc_id,
                    )
                )
    groups: dict[str, list[SourceDocument]] = {}
    for doc_id, doc in by_id.items():
        if doc_id not in conflicts:
            groups.setdefault(doc.content_hash, []).append(doc)
    summary.errors = [e for e in scan if e.kind != "quarantined"]
    summary.quarantined = [e for e in scan if e.kind == "quarantined"]
    stored = store.doc_hashes(corpus)
    docs: dict[str, SourceDocument] = {}
    dup_of: dict[str, list[str]] = {}
    for group in groups.values():
        # identical documents collapse onto one: the one already stored, else the first seen
        keep = next((d for d in group if d.doc_id in stored), group[0])
        docs[keep.doc_id] = keep
        others = sorted(d.doc_id for d in group if d is not keep)
        if others:
            dup_of[keep.doc_id] = others
            summary.duplicates += len(others)
    # revocation first: whatever is indexed but not in this scan's valid documents leaves the index now
    rejected = {e.doc_id for e in scan if e.doc_id is not None}
    gone = [d for d in stored if d not in docs]
    if gone:
        store.delete_docs(corpus, gone)
        summary.withdrawn = sorted(d for d in gone if d in rejected)
        summary.deleted = len(gone) - len(summary.withdrawn)
    # a document that lost its own access labels would silently take the corpus defaults (or become public):
    # it is withdrawn instead, and stays withdrawn (a tombstone) until it carries labels again
    delabeled = _delabeled(store, corpus, docs, stored)
    if delabeled:
        store.replace_docs(corpus, [(d, TOMBSTONE + stored[d].removeprefix(TOMBSTONE), []) for d in delabeled])
        for d in delabeled:
            doc = docs.pop(d)
            summary.errors.append(
                SourceError(
                    doc.origin or doc.source,
                    "lost its access metadata (the indexed version had its own labels, which the corpus defaults "
                    "would replace): withdrawn until it is labeled again (write the defaults' values to keep them)",
                    d,
                )
            )
        summary.withdrawn = sorted({*summary.withdrawn, *delabeled})
    todo = []
    for doc_id, doc in docs.items():
        h = pipeline.doc_hash(doc.content_hash)  # the default pipeline: the content hash itself
        if dup_of.get(doc_id):
            h = hashlib.sha256((h + "|" + ",".join(sorted(dup_of[doc_id]))).encode()).hexdigest()
        old = stored.get(doc_id)
        if old == h:
            summary.unchanged += 1
        else:
            todo.append((doc, h, old is not None))
    total = len(todo)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    if progress:
        progress(0, total)
    for i in range(0, total, batch_docs):
        batch = todo[i : i + batch_docs]
        produced, failed = pipeline.run([doc for doc, _, _ in batch])
        items = []
        written = []
        rejected_now: list[str] = []
        for doc, h, existed in batch:
            reason = failed.get(doc.doc_id)
            chunks: list[Any] = []
            if reason is None:
                try:
                    chunks = finalize_chunks(
                        doc,
                        produced.get(doc.doc_id, []),
                        corpus=corpus,
                        now=now,
                        doc_hash=h,
                        duplicate_ids=sorted(dup_of.get(doc.doc_id, [])),
                        access_spec=corpus_spec.access,
                    )
                except IngestError as exc:
                    reason = exc.message
            if reason is not None:  # rejected: never indexed, and an older version leaves the index
                summary.errors.append(SourceError(doc.origin or doc.source, reason, doc.doc_id))
                if existed:
                    rejected_now.append(doc.doc_id)
                continue
            items.append((doc.doc_id, h, chunks))
            written.append(existed)
        _embed(items, embed_fn, lambda c: embedding_text(c, pipeline.embed_title), summary)
        _check_dimensions(items, store)
        if rejected_now:
            store.delete_docs(corpus, rejected_now)
            summary.withdrawn = sorted([*summary.withdrawn, *rejected_now])
        if items:
            store.replace_docs(corpus, items)  # one transaction per batch
        for existed, (_, _, chunks) in zip(written, items, strict=True):
            summary.chunks_written += len(chunks)
            if existed:
                summary.updated += 1
            else:
                summary.added += 1
        if progress:
            progress(min(i + batch_docs, total), total)
    changed = summary.added or summary.updated or summary.deleted or summary.withdrawn
    warm = getattr(store, "warm", None)
    if changed and warm is not None:  # the first query after an ingest should not pay for the indexes
        t0 = time.perf_counter()
        warm(progress=sys.stderr.isatty())
        summary.index_seconds = time.perf_counter() - t0
    summary.seconds = time.perf_counter() - start
    return summary


#: Hash prefix of a withdrawn document's row (no chunks): it lost its access labels and stays out of the index
#: until its source carries labels again.
TOMBSTONE = "withdrawn-unlabeled:"


def _delabeled(store: Any, corpus: str, docs: dict[str, SourceDocument], stored: dict[str, str]) -> list[str]:
    """Unlabeled documents (defaults or public) whose indexed version had other access fields, or that are
    already withdrawn for losing their labels."""
    from ragconf.access import ACCESS_FIELDS

    candidates = [d for d, doc in docs.items() if not doc.labeled and d in stored]
    out = [d for d in candidates if stored[d].startswith(TOMBSTONE)]
    check = [d for d in candidates if d not in out]
    if not check:
        return out
    chunks = store.filter_documents({"field": "meta.doc_id", "operator": "in", "value": check})
    before: dict[str, dict[str, Any]] = {}
    for c in chunks:
        meta = c.meta or {}
        before.setdefault(str(meta.get("doc_id")), {f: meta.get(f) for f in ACCESS_FIELDS})
    for d in check:
        now = {f: docs[d].meta.get(f) for f in ACCESS_FIELDS}
        if d in before and before[d] != now:
            out.append(d)
    return sorted(out)


def _embed(items: list[Any], embed_fn: Callable[[list[str]], Any], text_of: Any, summary: Any) -> None:
    """One embedder call per batch for the chunks the pipeline left without a vector (with ragconf_embedder or
    no embedder at all: all of them), with the configured embedder, the model queries use."""
    missing = [(j, k) for j, (_, _, chunks) in enumerate(items) for k, c in enumerate(chunks) if c.embedding is None]
    if not missing:
        return
    t0 = time.perf_counter()
    vectors = embed_fn([text_of(items[j][2][k]) for j, k in missing])
    summary.embed_seconds += time.perf_counter() - t0
    for (j, k), v in zip(missing, vectors, strict=True):
        items[j][2][k] = replace(items[j][2][k], embedding=[float(x) for x in v])


def _check_dimensions(items: list[Any], store: Any) -> None:
    """Vectors of another size than the store's come from an embedder other than the query side's: stop."""
    dim = getattr(store, "embedding_dim", None)
    for _, _, chunks in items:
        for c in chunks:
            if dim is not None and len(c.embedding) != dim:
                raise CompileError(
                    f"the indexing pipeline made {len(c.embedding)}-d vectors, the store holds {dim}-d ones",
                    key="corpus.indexing",
                    hint="embed with ragconf_embedder (the configured embedder), or leave chunks without embeddings",
                )
