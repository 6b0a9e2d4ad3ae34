"""Haystack components of ragconf's default indexing pipeline: the structure-aware chunker and the embedder.

``ragconf_chunker`` is :func:`ragconf.ingest.chunking.chunk_text` as a component; ``ragconf_embedder`` marks
where the configured embedder (the one the query side uses) applies: the writer embeds each chunk as
``title\\ncontent`` after the pipeline, in batches. Together they reproduce the ingest that existed before
indexing pipelines were declarable: same chunk text, same ``section`` metadata, same embedding input.
"""

# no `from __future__ import annotations`: Haystack reads the socket types from run()'s real annotations

from typing import Any, Literal

from haystack import Document, component

from ragconf.ingest.chunking import chunk_text

__all__ = ["RagconfChunker", "RagconfEmbedder", "embedding_text"]


@component
class RagconfChunker:
    """ragconf's chunker: ``markdown`` (split at headings, heading path in meta ``section``), ``recursive``
    (paragraphs, sentences, words) or ``none``; ``size`` and ``overlap`` in words. Each chunk keeps its
    document's metadata. Defaults come from ``corpus.chunking``."""

    def __init__(
        self, strategy: Literal["markdown", "recursive", "none"] = "recursive", size: int = 200, overlap: int = 40
    ) -> None:
        from ragconf.spec.models import ChunkingSpec

        spec = ChunkingSpec(strategy=strategy, size=size, overlap=overlap)  # ValueError: named by the compiler
        self.strategy = spec.strategy
        self.size = spec.size
        self.overlap = spec.overlap

    @component.output_types(documents=list[Document])
    def run(self, documents: list[Document]) -> dict[str, Any]:
        out: list[Document] = []
        for doc in documents:
            for piece in chunk_text(doc.content or "", self.strategy, self.size, self.overlap):
                meta = dict(doc.meta or {})
                if piece.section:
                    meta["section"] = piece.section
                out.append(Document(content=piece.text, meta=meta))
        return {"documents": out}


@component
class RagconfEmbedder:
    """The configured embedder (``embedder.*``, the model queries use), as the last component of an indexing
    pipeline. It passes the chunks through: ragconf's writer embeds them after the pipeline, in batches across
    documents, as ``meta.title`` + newline + content (``embed_title: false``: the content alone)."""

    def __init__(self, embed_title: bool = True) -> None:
        self.embed_title = embed_title

    @component.output_types(documents=list[Document])
    def run(self, documents: list[Document]) -> dict[str, Any]:
        return {"documents": documents}


def embedding_text(doc: Document, embed_title: bool = True) -> str:
    """What ragconf embeds for a chunk: ``title\\ncontent`` when the chunk has a title, else the content."""
    title = (doc.meta or {}).get("title") if embed_title else None
    return (f"{title}\n" if title else "") + (doc.content or "")
