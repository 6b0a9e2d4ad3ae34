"""Haystack retrievers over any ChunkStore. Runtime filters are AND-ed with init filters, never replace them."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from haystack import Document, component, default_from_dict

from ragconf.store.filters import combine
from ragconf.store.fusion import rrf

__all__ = ["StoreBM25Retriever", "StoreEmbeddingRetriever", "StoreHybridRetriever"]


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


@component
class StoreHybridRetriever(_Base):
    """BM25 + dense retrieval fused by reciprocal-rank fusion in one store call (the access filter pushed into
    both branches), returning only the fused top-k: the same ranking as ``bm25_retriever`` +
    ``embedding_retriever`` (``candidates`` each) + ``rrf_joiner``, without building and copying every
    candidate. A store without ``hybrid_retrieval`` is queried branch by branch and fused here."""

    def __init__(
        self,
        document_store: Any,
        top_k: int = 10,
        filters: dict[str, Any] | None = None,
        candidates: int = 100,
        weights: list[float] | None = None,
    ) -> None:
        _Base.__init__(self, document_store, top_k, filters)  # @component rebuilds the class: no zero-arg super
        if candidates <= 0:
            raise ValueError(f"candidates must be > 0, got {candidates}")
        if weights is not None and (len(weights) != 2 or any(w < 0 for w in weights)):
            raise ValueError(f"weights must be two non-negative numbers [bm25, dense], got {weights}")
        self.candidates = candidates
        self.weights = list(weights) if weights is not None else None

    def to_dict(self) -> dict[str, Any]:
        data = _Base.to_dict(self)
        data["init_parameters"].update(candidates=self.candidates, weights=self.weights)
        return data

    @component.output_types(documents=list[Document])
    def run(
        self,
        query: str,
        query_embedding: list[float],
        filters: dict[str, Any] | None = None,
        top_k: int | None = None,
    ) -> dict[str, Any]:
        flt = combine(self.filters, filters)
        k = top_k or self.top_k
        store = self.document_store
        if hasattr(store, "hybrid_retrieval"):
            docs = store.hybrid_retrieval(
                query, query_embedding, filters=flt, top_k=k, candidates=max(self.candidates, k), weights=self.weights
            )
            return {"documents": docs}
        n = max(self.candidates, k)
        lexical = store.bm25_retrieval(query, filters=flt, top_k=n)
        dense = store.embedding_retrieval(query_embedding, filters=flt, top_k=n)
        by_id = {d.id: d for d in [*dense, *lexical]}
        fused = rrf([[d.id for d in lexical], [d.id for d in dense]], k, self.weights)
        return {"documents": [replace(by_id[i], score=s) for i, s in fused]}
