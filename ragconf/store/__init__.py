"""Chunk stores: the embedded SQLite store (default) and Elasticsearch, behind one seam."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ragconf.errors import SpecError
from ragconf.store.base import ChunkStore

__all__ = ["STORE_TYPES", "ChunkStore", "open_store"]

STORE_TYPES = ("sqlite", "elasticsearch")


def open_store(cfg: Mapping[str, Any], *, embedding_dim: int) -> ChunkStore:
    """The store described by ``cfg`` (the `store` config group)."""
    kind = cfg.get("type", "sqlite")
    if kind == "sqlite":
        if not cfg.get("path"):
            raise SpecError("the sqlite store needs a path", key="store.path")
        from ragconf.store.sqlite import SQLiteChunkStore

        return SQLiteChunkStore(
            cfg["path"], embedding_dim=embedding_dim, ann=cfg.get("ann"), index_files=cfg.get("index_files")
        )
    if kind == "elasticsearch":
        from ragconf.store.elasticsearch import ElasticsearchChunkStore

        return ElasticsearchChunkStore(
            hosts=cfg.get("hosts") or "http://localhost:9200",
            index=cfg.get("index") or "ragconf",
            embedding_dim=embedding_dim,
            api_key_env=cfg.get("api_key_env"),
        )
    raise SpecError(f"unknown store type '{kind}'", key="store.type", valid=STORE_TYPES, got=kind)
