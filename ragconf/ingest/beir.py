"""BEIR-format folders: corpus.jsonl, queries.jsonl, qrels/<split>.tsv."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ragconf.errors import IngestError

__all__ = ["iter_corpus", "load_qrels", "load_queries"]


def _jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    if not path.is_file():
        raise IngestError(f"'{path}' does not exist", hint="a BEIR folder holds corpus.jsonl, queries.jsonl, qrels/")
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise IngestError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
            if not isinstance(row, dict) or "_id" not in row:
                raise IngestError(f"{path}:{lineno}: each line needs an '_id'")
            yield lineno, row


def iter_corpus(root: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) for each document of ``root/corpus.jsonl``."""
    yield from _jsonl(Path(root) / "corpus.jsonl")


def load_queries(path: str | Path) -> dict[str, str]:
    """query id -> text from a queries.jsonl file (or a BEIR folder)."""
    p = Path(path)
    if p.is_dir():
        p = p / "queries.jsonl"
    return {str(row["_id"]): str(row.get("text", "")) for _, row in _jsonl(p)}


def load_qrels(path: str | Path, split: str = "test") -> dict[str, dict[str, int]]:
    """query id -> {doc id: relevance} from qrels/<split>.tsv (header: query-id corpus-id score)."""
    p = Path(path)
    if p.is_dir():
        p = p / "qrels" / f"{split}.tsv"
    if not p.is_file():
        raise IngestError(f"'{p}' does not exist")
    qrels: dict[str, dict[str, int]] = {}
    with p.open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t")
        for lineno, row in enumerate(reader, 1):
            if not row or (lineno == 1 and row[0] == "query-id"):
                continue
            if len(row) < 3:
                raise IngestError(f"{p}:{lineno}: expected 'query-id<TAB>corpus-id<TAB>score'")
            try:
                qrels.setdefault(row[0], {})[row[1]] = int(float(row[2]))
            except ValueError:
                raise IngestError(f"{p}:{lineno}: score '{row[2]}' is not a number") from None
    return qrels
