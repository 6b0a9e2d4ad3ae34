"""Reciprocal-rank fusion over ranked id lists: the same scores and order as Haystack's
``DocumentJoiner(join_mode="reciprocal_rank_fusion")`` (k=61 over 0-based ranks, weights default to equal,
ties in order of first appearance), without building or copying documents."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TypeVar

__all__ = ["RRF_K", "rrf"]

RRF_K = 61
H = TypeVar("H", bound=Hashable)


def rrf(lists: Sequence[Sequence[H]], top_k: int, weights: Sequence[float] | None = None) -> list[tuple[H, float]]:
    """The fused top-k ``(id, score)`` of ranked ``lists`` (best first)."""
    n = len(lists)
    if n == 0 or top_k <= 0:
        return []
    if weights is not None and len(weights) != n:
        raise ValueError(f"{len(weights)} fusion weights for {n} ranked lists")
    ws = list(weights) if weights else [1 / n] * n
    scores: dict[H, float] = {}
    for ids, w in zip(lists, ws, strict=True):
        for rank, key in enumerate(ids):
            scores[key] = scores.get(key, 0.0) + (w * n) / (RRF_K + rank)
    norm = n / RRF_K
    ranked = sorted(scores.items(), key=lambda kv: -kv[1])  # stable: ties keep first appearance
    return [(key, s / norm) for key, s in ranked[:top_k]]
