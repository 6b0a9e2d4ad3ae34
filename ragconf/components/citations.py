"""Numbered citation markers: ``[1]``, ``[1, 3]``, ``[2][4]``, ``[1-3]`` -> the documents they cite.

Numbers are 1-based positions in the list of documents the generator was given. Numbers outside
``1..len(documents)`` are ignored by :func:`extract_citations` and removed by :func:`strip_invalid_citations`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

__all__ = ["CITATION_RE", "citation_numbers", "extract_citations", "strip_invalid_citations"]

#: A bracketed list of numbers / ranges: ``[3]``, ``[1, 2]``, ``[1;2]``, ``[1-3]``, ``[1–3]``.
CITATION_RE = re.compile(r"\[\s*(\d+(?:\s*[-–]\s*\d+)?(?:\s*[,;]\s*\d+(?:\s*[-–]\s*\d+)?)*)\s*\]")
_MAX_RANGE = 100  # a "[1-100000]" typo must not explode


def _numbers(body: str) -> list[int]:
    out: list[int] = []
    for part in re.split(r"\s*[,;]\s*", body.strip()):
        bounds = [int(x) for x in re.split(r"\s*[-–]\s*", part) if x]
        if len(bounds) == 2 and bounds[0] <= bounds[1] and bounds[1] - bounds[0] <= _MAX_RANGE:
            out.extend(range(bounds[0], bounds[1] + 1))
        else:
            out.extend(bounds)
    return out


def citation_numbers(answer: str) -> list[int]:
    """Every cited number in order of first appearance (no duplicates, not range-checked)."""
    seen: dict[int, None] = {}
    for m in CITATION_RE.finditer(answer or ""):
        for n in _numbers(m.group(1)):
            seen.setdefault(n, None)
    return list(seen)


def _meta(doc: Any) -> dict[str, Any]:
    meta = getattr(doc, "meta", None)
    if meta is None and isinstance(doc, dict):
        meta = doc.get("meta")
    return meta or {}


def _get(doc: Any, name: str) -> Any:
    return doc.get(name) if isinstance(doc, dict) else getattr(doc, name, None)


def extract_citations(answer: str, documents: Sequence[Any]) -> list[dict[str, Any]]:
    """The documents ``answer`` cites, in order of first citation.

    Each item: ``{"n", "doc_id", "chunk_id", "source", "title", "score"}`` where ``chunk_id`` is the
    Document id, ``doc_id`` its ``meta.doc_id`` (falls back to the chunk id). Out-of-range numbers are
    ignored. ``documents`` may be Haystack Documents or dicts with the same fields.
    """
    out: list[dict[str, Any]] = []
    for n in citation_numbers(answer):
        if not 1 <= n <= len(documents):
            continue
        doc = documents[n - 1]
        meta = _meta(doc)
        chunk_id = _get(doc, "id")
        out.append(
            {
                "n": n,
                "doc_id": meta.get("doc_id") or chunk_id,
                "chunk_id": chunk_id,
                "source": meta.get("source"),
                "title": meta.get("title"),
                "score": _get(doc, "score"),
            }
        )
    return out


def strip_invalid_citations(answer: str, n_documents: int) -> str:
    """Remove cited numbers outside ``1..n_documents``; a marker with no valid number is removed entirely.

    Valid markers are rewritten canonically (``[1, 3]``); text outside markers is left untouched except
    for the space before a removed marker.
    """

    def fix(m: re.Match[str]) -> str:
        nums = list(dict.fromkeys(n for n in _numbers(m.group(1)) if 1 <= n <= n_documents))
        return "[" + ", ".join(str(n) for n in nums) + "]" if nums else ""

    text = CITATION_RE.sub(fix, answer or "")
    # "sentence [99]." -> "sentence ." -> "sentence."
    text = re.sub(r"[ \t]+([.,;:!?])", r"\1", text) if text != answer else text
    return re.sub(r"[ \t]{2,}", " ", text).strip() if text != answer else text
