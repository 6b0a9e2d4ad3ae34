"""Chunking strategies; sizes and overlaps are counted in words.

- ``markdown``: structure-aware: splits at headings, records the heading path as meta ``section`` and packs
  each section's paragraphs like ``recursive``.
- ``recursive``: packs paragraphs, then sentences, then words into chunks of at most ``size`` words, carrying
  up to ``overlap`` words of trailing text into the next chunk.
- ``none``: the whole document is one chunk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Chunk", "chunk_text"]

_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[])")


@dataclass
class Chunk:
    text: str
    section: str = ""


def _words(text: str) -> int:
    return len(text.split())


def _units(text: str, size: int) -> list[str]:
    """Paragraphs, with paragraphs over ``size`` words split into sentences, and sentences into words."""
    out: list[str] = []
    for para in re.split(r"\n\s*\n", text):
        para = para.strip()
        if not para:
            continue
        if _words(para) <= size:
            out.append(para)
            continue
        for sent in _SENTENCE.split(para):
            words = sent.split()
            for i in range(0, len(words), size):
                out.append(" ".join(words[i : i + size]))
    return out


def _pack(units: list[str], size: int, overlap: int) -> list[str]:
    chunks: list[str] = []
    current: list[str] = []
    count = 0
    for unit in units:
        n = _words(unit)
        if current and count + n > size:
            chunks.append("\n\n".join(current))
            carry: list[str] = []
            kept = 0
            for prev in reversed(current):
                w = _words(prev)
                if kept + w > overlap:
                    break
                carry.insert(0, prev)
                kept += w
            if kept + n > size:
                carry, kept = [], 0
            current, count = carry, kept
        current.append(unit)
        count += n
    if current:
        chunks.append("\n\n".join(current))
    return chunks


def _sections(text: str) -> list[tuple[str, str]]:
    """(heading path, body) pairs; text before the first heading has an empty path."""
    path: list[tuple[int, str]] = []
    out: list[tuple[str, str]] = []
    body: list[str] = []
    in_fence = False

    def flush() -> None:
        content = "\n".join(body).strip()
        if content:
            out.append((" > ".join(t for _, t in path), content))
        body.clear()

    for line in text.split("\n"):
        if line.strip().startswith("```"):
            in_fence = not in_fence
        m = None if in_fence else _HEADING.match(line)
        if m:
            flush()
            level = len(m.group(1))
            path = [(lvl, t) for lvl, t in path if lvl < level] + [(level, m.group(2).strip())]
        else:
            body.append(line)
    flush()
    return out


def chunk_text(text: str, strategy: str = "recursive", size: int = 200, overlap: int = 40) -> list[Chunk]:
    """Split ``text`` into chunks (see module docstring)."""
    text = text.strip()
    if not text:
        return []
    if strategy == "none":
        return [Chunk(text)]
    if strategy == "markdown":
        chunks: list[Chunk] = []
        for section, body in _sections(text):
            chunks.extend(Chunk(c, section) for c in _pack(_units(body, size), size, overlap))
        return chunks
    if strategy == "recursive":
        return [Chunk(c) for c in _pack(_units(text, size), size, overlap)]
    raise ValueError(f"unknown chunking strategy '{strategy}' (valid: markdown, recursive, none)")
