"""Indexing pipelines declared in YAML (``corpus.indexing``), built with the query stages' compiler.

Where it sits (docs/ingest.md):

    sources -> access schema (ragconf) -> [indexing pipeline: converters, cleaners, splitters, enrichers,
    embedder] -> writer (ragconf: access re-check, ids, incremental sync)

ragconf reads every source and validates its access metadata first (:mod:`ragconf.ingest.sources`); only
valid documents reach the pipeline, as Haystack ``Document``s (``documents`` inputs: text extracted by ragconf)
or ``ByteStream``s (``sources`` inputs: the file's bytes, for a Haystack converter), each carrying the document's
metadata. The pipeline's output is a list of chunks. The writer then checks every chunk (:func:`finalize_chunks`):
its access fields are validated again and may only be *as or more restrictive* than its document's
(classification may rise, never fall; acl_groups may narrow; tenant and declared attributes may not change); a
violation rejects the whole document (withdrawn when an older version is indexed). Chunk ids, positions and
bookkeeping metadata are the writer's. A component that takes a ``document_store`` is refused: the writer is
ragconf's and cannot be replaced.

Without ``corpus.indexing`` the default pipeline is ``ragconf_chunker`` (``corpus.chunking``) then
``ragconf_embedder`` (the configured embedder): exactly the ingest that predates declarable pipelines.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragconf.access import ACCESS_FIELDS, AccessValueError, describe, validate_field
from ragconf.compile import BuildContext, BuiltStage, build_stage, output_sockets
from ragconf.errors import CompileError, IngestError, RagconfError
from ragconf.ingest.sources import SourceDocument, _flatten
from ragconf.registry import ComponentEntry, Registry, default_registry
from ragconf.spec.models import ComponentSpec, ConnectionSpec, IndexingSpec, StageSpec
from ragconf.types import CLASSIFICATIONS

__all__ = [
    "FORMATS",
    "INDEXING_COMPONENTS",
    "WRITER_KEYS",
    "IndexingPipeline",
    "build_indexing",
    "default_indexing",
    "finalize_chunks",
    "indexing_registry",
]

KEY = "corpus.indexing"
#: Source formats; each has a `<format>_documents` and a `<format>_sources` input.
FORMATS = ("markdown", "text", "html", "pdf", "beir")
MIME_TYPES = {
    "markdown": "text/markdown",
    "text": "text/plain",
    "html": "text/html",
    "pdf": "application/pdf",
    "beir": "text/plain",
}
#: Chunk metadata only the writer sets (whatever a component wrote there is replaced).
WRITER_KEYS = (
    "doc_id",
    "source",
    "title",
    "position",
    "chunks_total",
    "content_hash",
    "chunk_hash",
    "ingested_at",
    "corpus",
    "format",
    "duplicate_ids",
)
_LEVEL = {c: i for i, c in enumerate(CLASSIFICATIONS)}

#: Aliases for indexing pipelines, on top of the query registry's (Haystack class paths work as well).
INDEXING_COMPONENTS: list[ComponentEntry] = [
    ComponentEntry(
        "ragconf_chunker",
        "ragconf.ingest.components:RagconfChunker",
        "other",
        "indexing: structure-aware chunker: markdown (heading path in meta.section) / recursive / none; sizes in words",
    ),
    ComponentEntry(
        "ragconf_embedder",
        "ragconf.ingest.components:RagconfEmbedder",
        "other",
        "indexing: embeds chunks (title + content) with the configured embedder (embedder.*)",
    ),
    ComponentEntry(
        "document_cleaner",
        "haystack.components.preprocessors:DocumentCleaner",
        "other",
        "indexing: Haystack's DocumentCleaner: empty lines, extra whitespace, repeated substrings, regexes",
    ),
    ComponentEntry(
        "document_splitter",
        "haystack.components.preprocessors:DocumentSplitter",
        "other",
        "indexing: Haystack's DocumentSplitter: by word / sentence / passage / page / line, with overlap",
    ),
    ComponentEntry(
        "text_converter",
        "haystack.components.converters:TextFileToDocument",
        "other",
        "indexing: Haystack's TextFileToDocument (a `sources` input: the file's bytes as text)",
    ),
    ComponentEntry(
        "pdf_converter",
        "haystack.components.converters:PyPDFToDocument",
        "other",
        "indexing: Haystack's PyPDFToDocument (a `sources` input: the PDF's bytes)",
    ),
    ComponentEntry(
        "pii_classifier",
        "ragconf.components.enrichers:PIIClassifier",
        "other",
        "indexing: Presidio (offline): records the PII types found in meta.pii_entities, raises classification by rule",
        extra="pii",
    ),
    ComponentEntry(
        "language_tagger",
        "ragconf.components.enrichers:LanguageTagger",
        "other",
        "indexing: records the language (en, de, fr, es, it, nl, pt, sv) in meta.language (stopword overlap, offline)",
    ),
]


def indexing_registry(base: Registry | None = None) -> Registry:
    """The query registry (built-ins, plugins, Haystack class paths) plus the indexing aliases."""
    reg = base or default_registry()
    for entry in INDEXING_COMPONENTS:
        reg.register(entry)
    return reg


def input_names() -> list[str]:
    return ["documents", "sources", *(f"{f}_{k}" for f in FORMATS for k in ("documents", "sources"))]


def default_indexing(corpus_spec: Any) -> IndexingSpec:
    """The pipeline a corpus without ``indexing`` gets: ragconf's chunker, then the configured embedder."""
    ch = corpus_spec.chunking
    return IndexingSpec(
        components={
            "chunker": ComponentSpec(
                type="ragconf_chunker", params={"strategy": ch.strategy, "size": ch.size, "overlap": ch.overlap}
            ),
            "embedder": ComponentSpec(type="ragconf_embedder"),
        },
        connections=[ConnectionSpec(sender="chunker.documents", receiver="embedder.documents")],
        inputs={"documents": ["chunker.documents"]},
        output="embedder.documents",
    )


@dataclass
class IndexingPipeline:
    """A built indexing pipeline: feeds documents to its inputs by format and groups its chunks by document."""

    stage: BuiltStage
    spec: IndexingSpec
    #: Whether the corpus declares `indexing` (else: the default pipeline).
    declared: bool
    #: format -> (stage input, "documents" | "sources")
    routes: dict[str, tuple[str, str]]
    #: Whether the writer embeds ``title\ncontent`` (False: the content alone).
    embed_title: bool = True

    @property
    def fingerprint(self) -> str | None:
        """A digest of the declared pipeline (None for the default one): part of every document's stored hash,
        so changing the pipeline (a new PII rule) re-indexes documents that did not change."""
        if not self.declared:
            return None
        blob = json.dumps(self.spec.model_dump(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def doc_hash(self, content_hash: str) -> str:
        fp = self.fingerprint
        if fp is None:
            return content_hash
        return hashlib.sha256(f"{content_hash}|indexing:{fp}".encode()).hexdigest()

    def run(self, docs: list[SourceDocument]) -> tuple[dict[str, list[Any]], dict[str, str]]:
        """(chunks per document id, rejection reason per document id). Each document runs through the pipeline
        on its own, so a chunk can only come from the document it is stored under and a component failure
        rejects only the document it failed on; embedding happens afterwards, in batches (the writer)."""
        chunks: dict[str, list[Any]] = {}
        errors: dict[str, str] = {}
        for doc in docs:
            try:
                chunks[doc.doc_id] = self._run_one(doc)
            except IngestError as exc:
                errors[doc.doc_id] = exc.message
            except RagconfError as exc:
                errors[doc.doc_id] = f"the indexing pipeline failed: {exc.message}"
        return chunks, errors

    def _feed(self, doc: SourceDocument) -> tuple[str, Any]:
        route = self.routes.get(doc.format)
        if route is None:
            raise IngestError(
                f"no input of {KEY} takes {doc.format} documents (declare {doc.format}_documents, "
                f"{doc.format}_sources, documents or sources in {KEY}.inputs)"
            )
        name, kind = route
        meta = {**doc.meta, "doc_id": doc.doc_id, "source": doc.source, "title": doc.title, "format": doc.format}
        if kind == "documents":
            from haystack import Document

            return name, Document(content=doc.text, meta=meta)
        from haystack.dataclasses import ByteStream

        if doc.raw_sha256 is None:  # a BEIR row: its text is its bytes
            return name, ByteStream(data=doc.text.encode(), meta=meta, mime_type=MIME_TYPES[doc.format])
        try:
            data = Path(doc.source).read_bytes()
        except OSError as exc:
            raise IngestError(f"cannot read the file again for {KEY}.inputs.{name}: {exc.strerror or exc}") from None
        if hashlib.sha256(data).hexdigest() != doc.raw_sha256:
            raise IngestError(
                "the file changed while it was being ingested (its access metadata was read from the "
                "earlier version); run ingest again"
            )
        return name, ByteStream(data=data, meta=meta, mime_type=MIME_TYPES[doc.format])

    def _run_one(self, doc: SourceDocument) -> list[Any]:
        from haystack import Document

        name, item = self._feed(doc)
        values: dict[str, list[Any]] = {n: [] for n in self.stage.inputs}
        values[name] = [item]
        out, _ = self.stage.run(values)
        if not isinstance(out, list) or not all(isinstance(d, Document) for d in out):
            raise IngestError(f"{KEY}.output '{self.spec.output}' did not produce a list of Documents")
        for chunk in out:
            claimed = (chunk.meta or {}).get("doc_id", doc.doc_id)
            if claimed != doc.doc_id:
                raise IngestError(
                    f"a chunk from {KEY} claims to belong to the document {describe(claimed)}; components may not "
                    "change meta.doc_id"
                )
        return list(out)


def build_indexing(
    corpus_spec: Any,
    *,
    source_of: Callable[[str], str] | None = None,
    registry: Registry | None = None,
    warm_up: bool = True,
) -> IndexingPipeline:
    """Build (and warm up) the corpus's indexing pipeline; configuration mistakes raise CompileError /
    RegistryError naming ``corpus.indexing...``, the file and the valid options, before anything is read."""
    src = source_of or (lambda key: "<config>")
    declared = corpus_spec.indexing is not None
    spec: IndexingSpec = corpus_spec.indexing if declared else default_indexing(corpus_spec)
    reg = indexing_registry(registry)
    valid_inputs = input_names()
    for name in spec.inputs:
        if name not in valid_inputs:
            key = f"{KEY}.inputs.{name}"
            raise CompileError(
                f"unknown indexing input '{name}'",
                key=key,
                source=src(key),
                valid=valid_inputs,
                got=name,
                hint="documents: text extracted by ragconf; sources: the file's bytes for a converter",
            )
    for scope in ("", *(f"{f}_" for f in FORMATS)):
        if f"{scope}documents" in spec.inputs and f"{scope}sources" in spec.inputs:
            key = f"{KEY}.inputs.{scope}sources"
            raise CompileError(
                f"'{scope}documents' and '{scope}sources' would feed the same documents twice; declare one",
                key=key,
                source=src(key),
            )
    components: dict[str, ComponentSpec] = {}
    for name, cspec in spec.components.items():
        key = f"{KEY}.components.{name}"
        entry = reg.get(cspec.type, key=f"{key}.type", source=src(key))
        if entry.takes_document_store():
            raise CompileError(
                f"component '{name}' ({cspec.type}) takes a document_store: the writer is ragconf's (it re-checks "
                "every chunk's access fields and syncs incrementally) and cannot be part of the indexing pipeline",
                key=f"{key}.type",
                source=src(key),
                hint=f"end the pipeline at the chunks: {KEY}.output: <component>.documents",
            )
        if entry.alias == "ragconf_chunker":  # corpus.chunking gives the defaults
            ch = corpus_spec.chunking
            defaults = {"strategy": ch.strategy, "size": ch.size, "overlap": ch.overlap}
            cspec = ComponentSpec(type=cspec.type, params={**defaults, **cspec.params})
        components[name] = cspec
    stage_spec = StageSpec(
        name=spec.name,
        components=components,
        connections=spec.connections,
        inputs=spec.inputs,
        output=spec.output,
    )
    stage = build_stage(stage_spec, KEY, BuildContext(registry=reg, source_of=src))
    out_comp, out_sock = stage.output
    sock = output_sockets(stage.pipeline.get_component(out_comp)).get(out_sock)
    if sock is not None and "Document" not in str(getattr(sock, "type", "")):
        key = f"{KEY}.output"
        raise CompileError(
            f"'{spec.output}' is a {getattr(sock.type, '__name__', sock.type)}, not the list of Documents (chunks) "
            "the writer stores",
            key=key,
            source=src(key),
        )
    routes: dict[str, tuple[str, str]] = {}
    for fmt in FORMATS:
        for name in (f"{fmt}_documents", f"{fmt}_sources", "documents", "sources"):
            if name in spec.inputs:
                routes[fmt] = (name, "documents" if name.endswith("documents") else "sources")
                break
    from ragconf.ingest.components import RagconfEmbedder

    embed_title = True
    for name, inst in stage.pipeline.walk():
        if isinstance(inst, RagconfEmbedder):
            if name != out_comp:
                key = f"{KEY}.components.{name}"
                raise CompileError(
                    f"'{name}' ({spec.components[name].type}) must be the last component: the writer embeds the "
                    f"chunks after the pipeline, so its output is {KEY}.output",
                    key=key,
                    source=src(key),
                )
            embed_title = bool(inst.embed_title)
    if warm_up:  # a missing extra or a bad parameter found when loading stops here, before anything is read
        for name, inst in stage.pipeline.walk():
            if not hasattr(inst, "warm_up"):
                continue
            key = f"{KEY}.components.{name}"
            try:
                inst.warm_up()
            except RagconfError:
                raise
            except (ValueError, TypeError) as exc:
                raise CompileError(f"component '{name}': {exc}", key=key, source=src(key)) from None
            except Exception as exc:
                raise IngestError(f"{key}: failed to start: {type(exc).__name__}: {exc}") from None
    return IndexingPipeline(stage, spec, declared, routes, embed_title)


# ----- the writer's checks ------------------------------------------------------------------------------


def _access_fields(access_spec: Any) -> tuple[str, ...]:
    return (*ACCESS_FIELDS, *(getattr(access_spec, "attributes", None) or []))


def _tightened(doc: SourceDocument, meta: dict[str, Any], access_spec: Any, pos: int) -> dict[str, Any]:
    """The chunk's canonical access fields; IngestError when one is invalid or less restrictive than the
    document's (classification may rise, acl_groups may narrow, tenant and attributes may not change)."""
    cmap = getattr(access_spec, "classification_map", None) or {}
    out: dict[str, Any] = {}
    where = f"chunk {pos} from {KEY}"
    for f in _access_fields(access_spec):
        had = f in doc.meta
        before = doc.meta.get(f)
        if f not in meta:
            if had:
                raise IngestError(f"{where} lost the access field '{f}' (the document has {describe(before)})")
            continue
        try:
            value = validate_field(f, meta[f], classification_map=cmap)
        except AccessValueError as exc:
            raise IngestError(f"{where}: {exc}") from None
        if f == "classification":
            old = before if had else "public"
            if _LEVEL[str(value)] < _LEVEL[str(old)]:
                raise IngestError(f"{where} lowers classification from '{old}' to '{value}' (it may only rise)")
        elif f == "acl_groups":
            if had and not set(value) <= set(before or []):
                added = sorted(set(value) - set(before or []))
                raise IngestError(f"{where} widens acl_groups {before} with {added} (groups may only be removed)")
        elif not had or value != before:
            shown = describe(before) if had else "none"
            raise IngestError(f"{where} changes the access field '{f}' from {shown} to {describe(value)}")
        out[f] = value
    return out


def finalize_chunks(
    doc: SourceDocument,
    chunks: list[Any],
    *,
    corpus: str,
    now: str,
    doc_hash: str,
    duplicate_ids: list[str],
    access_spec: Any,
) -> list[Any]:
    """The chunks as the writer stores them: access fields re-validated and no less restrictive than the
    document's, descriptive metadata flattened (keys starting with '_' dropped), the writer's keys and ids set.
    Raises IngestError (the document is rejected) on any violation."""
    from haystack import Document

    fields = set(_access_fields(access_spec))
    out = []
    total = len(chunks)
    for pos, chunk in enumerate(chunks):
        if not isinstance(chunk.content, str):
            raise IngestError(f"chunk {pos} from {KEY} has no text content")
        raw = dict(chunk.meta or {})
        access = _tightened(doc, raw, access_spec, pos)
        rest = {k: v for k, v in raw.items() if k not in fields and k not in WRITER_KEYS}
        rest = {k: v for k, v in rest.items() if not (isinstance(k, str) and k.startswith("_"))}
        try:
            flat = _flatten(rest)
        except IngestError as exc:
            raise IngestError(f"chunk {pos} from {KEY}: {exc.message}") from None
        chunk_hash = hashlib.sha256(chunk.content.encode()).hexdigest()
        cid = hashlib.sha256(f"{corpus}\x00{doc.doc_id}\x00{pos}\x00{chunk_hash}".encode()).hexdigest()
        meta = {
            **flat,
            **access,
            "doc_id": doc.doc_id,
            "source": doc.source,
            "title": doc.title,
            "position": pos,
            "chunks_total": total,
            "content_hash": doc_hash,
            "chunk_hash": chunk_hash,
            "ingested_at": now,
            "corpus": corpus,
            "format": doc.format,
        }
        if duplicate_ids:
            meta["duplicate_ids"] = duplicate_ids
        out.append(Document(id=cid, content=chunk.content, meta=meta, embedding=chunk.embedding))
    return out
