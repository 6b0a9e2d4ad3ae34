"""Small thread-safe LRU caches with hit/miss counters (query embeddings, retrieval results).

What may be cached, and under which key, is decided by the callers (:mod:`ragconf.runtime`,
:mod:`ragconf.components.embedders`); this module only stores values and counts."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

__all__ = ["LRUCache", "cache_stats"]

_ALL: dict[str, LRUCache] = {}
_ALL_LOCK = threading.Lock()


class LRUCache:
    """At most ``size`` entries (``size <= 0``: caches nothing); ``hits``, ``misses`` and ``saved_ms`` (the time
    the cached values took to compute, summed over hits)."""

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = int(size)
        self._data: OrderedDict[Hashable, tuple[Any, float]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.saved_ms = 0.0
        with _ALL_LOCK:
            _ALL[name] = self

    def get(self, key: Hashable) -> Any | None:
        if self.size <= 0:
            return None
        with self._lock:
            item = self._data.get(key)
            if item is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            self.saved_ms += item[1]
            return item[0]

    def put(self, key: Hashable, value: Any, cost_ms: float = 0.0) -> None:
        if self.size <= 0:
            return
        with self._lock:
            self._data[key] = (value, float(cost_ms))
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def stats(self) -> dict[str, float]:
        with self._lock:
            total = self.hits + self.misses
            return {
                "hits": float(self.hits),
                "misses": float(self.misses),
                "hit_rate": self.hits / total if total else 0.0,
                "saved_ms": self.saved_ms,
                "entries": float(len(self._data)),
            }


def cache_stats() -> dict[str, dict[str, float]]:
    """Every cache of this process by name: hits, misses, hit rate, saved ms, entries."""
    with _ALL_LOCK:
        caches = list(_ALL.values())
    return {c.name: c.stats() for c in caches}
