"""Ingestion: sources (files, BEIR), normalisation, chunking, incremental sync into a store."""

from ragconf.ingest.beir import load_qrels, load_queries
from ragconf.ingest.chunking import Chunk, chunk_text
from ragconf.ingest.sources import SourceDocument, SourceError, SourceUnavailable, iter_source
from ragconf.ingest.sync import IngestSummary, ingest

__all__ = [
    "Chunk",
    "IngestSummary",
    "SourceDocument",
    "SourceError",
    "SourceUnavailable",
    "chunk_text",
    "ingest",
    "iter_source",
    "load_qrels",
    "load_queries",
]
