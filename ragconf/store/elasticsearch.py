"""Elasticsearch behind the same seam, through elasticsearch-haystack (``pip install 'ragconf[elasticsearch]'``).

Pipelines do not change: the same retriever components call ``bm25_retrieval`` / ``embedding_retrieval`` with
the access filter, which Elasticsearch applies inside the query (before top-k). A document's chunks are
written before its old chunks are removed; a document counts as stored only when all of its chunks carry the
same content hash and their number matches ``chunks_total``, so an interrupted write is redone on re-ingest.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from typing import Any

from ragconf.errors import StoreError
from ragconf.store.filters import to_sql

__all__ = ["ElasticsearchChunkStore", "es_filter"]


def es_filter(flt: dict[str, Any] | None) -> dict[str, Any] | None:
    """Rewrite ``in``/``not in`` lists holding null (missing field) into OR/AND with ``== None``. A malformed
    filter or an unsupported operator is a StoreError naming it (checked like the SQLite store does)."""
    if not flt:
        return flt
    to_sql(flt, [])  # validation only: the same grammar and operators for every store
    return _rewrite(flt)


def _rewrite(flt: dict[str, Any]) -> dict[str, Any]:
    op = flt.get("operator")
    if op in ("AND", "OR", "NOT"):
        return {"operator": op, "conditions": [_rewrite(c) for c in flt.get("conditions", [])]}
    value = flt.get("value")
    if op in ("in", "not in") and isinstance(value, list) and None in value:
        rest = [v for v in value if v is not None]
        field = flt["field"]
        if op == "in":
            conds: list[dict[str, Any]] = [{"field": field, "operator": "==", "value": None}]
            if rest:
                conds.append({"field": field, "operator": "in", "value": rest})
            return {"operator": "OR", "conditions": conds}
        conds = [{"field": field, "operator": "!=", "value": None}]
        if rest:
            conds.append({"field": field, "operator": "not in", "value": rest})
        return {"operator": "AND", "conditions": conds}
    return flt


class ElasticsearchChunkStore:
    """ChunkStore over an Elasticsearch index."""

    def __init__(self, hosts: str, index: str, embedding_dim: int, api_key_env: str | None = None) -> None:
        try:
            from haystack_integrations.document_stores.elasticsearch import ElasticsearchDocumentStore
        except ImportError:
            raise StoreError(
                "the elasticsearch store needs elasticsearch-haystack", hint="pip install 'ragconf[elasticsearch]'"
            ) from None
        kwargs: dict[str, Any] = {"hosts": hosts, "index": index}
        if api_key_env:
            from haystack.utils import Secret

            if not os.environ.get(api_key_env):
                raise StoreError(f"environment variable {api_key_env} (store.api_key_env) is not set")
            kwargs["api_key"] = Secret.from_env_var(api_key_env)
        self.embedding_dim = embedding_dim
        # the constructor's own arguments, so to_dict/from_dict round-trip (the key stays in its variable)
        self._init = {"hosts": hosts, "index": index, "embedding_dim": embedding_dim, "api_key_env": api_key_env}
        self._es = ElasticsearchDocumentStore(**kwargs)

    def _wrap(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except StoreError:
            raise
        except Exception as exc:  # connection errors, mapping errors, bad filters
            raise StoreError(f"elasticsearch: {exc}") from None

    # Haystack protocol
    def count_documents(self) -> int:
        return int(self._wrap(self._es.count_documents))

    def filter_documents(self, filters: dict[str, Any] | None = None) -> list[Any]:
        return list(self._wrap(self._es.filter_documents, filters=es_filter(filters)))

    def write_documents(self, documents: list[Any], policy: Any = None) -> int:
        from haystack.document_stores.types import DuplicatePolicy

        return int(self._wrap(self._es.write_documents, documents, policy or DuplicatePolicy.NONE))

    def delete_documents(self, document_ids: list[str]) -> None:
        self._wrap(self._es.delete_documents, document_ids)

    # retrieval
    def bm25_retrieval(self, query: str, *, filters: dict[str, Any] | None = None, top_k: int = 10) -> list[Any]:
        return list(self._wrap(self._es._bm25_retrieval, query, filters=es_filter(filters), top_k=top_k))

    def embedding_retrieval(
        self, query_embedding: list[float], *, filters: dict[str, Any] | None = None, top_k: int = 10
    ) -> list[Any]:
        return list(self._wrap(self._es._embedding_retrieval, query_embedding, filters=es_filter(filters), top_k=top_k))

    # ingest sync
    def _corpus(self, corpus: str) -> list[Any]:
        return self.filter_documents({"field": "meta.corpus", "operator": "==", "value": corpus})

    def doc_hashes(self, corpus: str) -> dict[str, str]:
        by_doc: dict[str, list[Any]] = {}
        for d in self._corpus(corpus):
            by_doc.setdefault(str(d.meta.get("doc_id")), []).append(d)
        out = {}
        for doc_id, chunks in by_doc.items():
            hashes = {c.meta.get("content_hash") for c in chunks}
            total = chunks[0].meta.get("chunks_total")
            out[doc_id] = hashes.pop() if len(hashes) == 1 and total == len(chunks) else ""
        return out

    def replace_docs(self, corpus: str, items: list[tuple[str, str, list[Any]]]) -> None:
        from haystack.document_stores.types import DuplicatePolicy

        for doc_id, _h, chunks in items:
            if chunks:
                self._wrap(self._es.write_documents, chunks, DuplicatePolicy.OVERWRITE)
            keep = {c.id for c in chunks}
            old = self.filter_documents(
                {
                    "operator": "AND",
                    "conditions": [
                        {"field": "meta.corpus", "operator": "==", "value": corpus},
                        {"field": "meta.doc_id", "operator": "==", "value": doc_id},
                    ],
                }
            )
            stale = [d.id for d in old if d.id not in keep]
            if stale:
                self.delete_documents(stale)

    def delete_docs(self, corpus: str, doc_ids: Iterable[str]) -> int:
        ids = list(doc_ids)
        removed = 0
        for doc_id in ids:
            old = self.filter_documents(
                {
                    "operator": "AND",
                    "conditions": [
                        {"field": "meta.corpus", "operator": "==", "value": corpus},
                        {"field": "meta.doc_id", "operator": "==", "value": doc_id},
                    ],
                }
            )
            if old:
                self.delete_documents([d.id for d in old])
                removed += 1
        return removed

    def fingerprint(self) -> dict[str, Any]:
        docs = self.filter_documents()
        h = hashlib.sha256()
        for d in sorted(docs, key=lambda d: d.id):
            h.update(f"{d.id}:{d.meta.get('content_hash')}\n".encode())
        return {
            "documents": len({d.meta.get("doc_id") for d in docs}),
            "chunks": len(docs),
            "content_hash": h.hexdigest(),
        }

    def close(self) -> None:
        try:
            self._es.client.close()
        except Exception:  # closing a client that never connected
            pass

    def to_dict(self) -> dict[str, Any]:
        """The constructor's parameters (never the API key itself: only the name of its variable)."""
        return {"type": "ragconf.store.elasticsearch.ElasticsearchChunkStore", "init_parameters": dict(self._init)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ElasticsearchChunkStore:
        return cls(**data["init_parameters"])
