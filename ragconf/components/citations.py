"""Numbered citations: [n] markers in an answer -> the documents they point at."""

from __future__ import annotations

import re
from typing import Any

__all__ = ["extract_citations", "strip_invalid_markers"]

_MARK = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")


def _numbers(answer: str) -> list[int]:
    out: list[int] = []
    for m in _MARK.finditer(answer):
        for part in m.group(1).split(","):
            n = int(part.strip())
            if n not in out:
                out.append(n)
    return out


def extract_citations(answer: str, documents: list[Any]) -> list[dict[str, Any]]:
    """One entry per cited document (first-citation order); out-of-range numbers are ignored."""
    cites = []
    for n in _numbers(answer):
        if 1 <= n <= len(documents):
            d = documents[n - 1]
            meta = d.meta or {}
            cites.append({"n": n, "doc_id": meta.get("doc_id"), "chunk_id": d.id, "source": meta.get("source"),
                          "title": meta.get("title"), "score": d.score})
    return cites


def strip_invalid_markers(answer: str, n_documents: int) -> str:
    """Remove markers that point at no document."""

    def keep(m: re.Match[str]) -> str:
        nums = [p.strip() for p in m.group(1).split(",") if 1 <= int(p) <= n_documents]
        return f"[{', '.join(nums)}]" if nums else ""

    return _MARK.sub(keep, answer)
