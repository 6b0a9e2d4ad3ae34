"""Haystack retrievers over any ChunkStore. Runtime filters are AND-ed with init filters, never replace them."""

from __future__ import annotations

from typing import Any

from haystack import Document, component, default_from_dict

from ragconf.store.filters import combine

__all__ = ["StoreBM25Retriever", "StoreEmbeddingRetriever"]


class _Base:
    def __init__(self, document_store: Any, top_k: int = 10, filters: dict[str, Any] | None = None) -> None:
        if top_k <= 0:
            raise ValueError(f"top_k must be > 0, got {top_k}")
        self.document_store = document_store
        self.top_k = top_k
        self.filters = filters

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": f"{type(self).__module__}.{type(self).__name__}",
            "init_parameters": {
                "document_store": self.document_store.to_dict(),
                "top_k": self.top_k,
                "filters": self.filters,
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        from ragconf.store.sqlite import SQLiteChunkStore

        params = data["init_parameters"]
        params["document_store"] = SQLiteChunkStore.from_dict(params["document_store"])
        return default_from_dict(cls, data)


@component
class StoreBM25Retriever(_Base):
    """BM25 over the store, with the access filter pushed down."""

    @component.output_types(documents=list[Document])
    def run(self, query: str, filters: dict[str, Any] | None = None, top_k: int | None = None) -> dict[str, Any]:
        docs = self.document_store.bm25_retrieval(
            query, filters=combine(self.filters, filters), top_k=top_k or self.top_k
        )
        return {"documents": docs}


@component
class StoreEmbeddingRetriever(_Base):
    """Exact dense retrieval over the store, with the access filter pushed down."""

    @component.output_types(documents=list[Document])
    def run(
        self, query_embedding: list[float], filters: dict[str, Any] | None = None, top_k: int | None = None
    ) -> dict[str, Any]:
        docs = self.document_store.embedding_retrieval(
            query_embedding, filters=combine(self.filters, filters), top_k=top_k or self.top_k
        )
        return {"documents": docs}
