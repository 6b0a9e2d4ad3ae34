"""Prometheus metrics of one server (its own registry): requests and latency by route and status, policy
denials and refusals, generator tokens, cache hit rates and saved time."""

from __future__ import annotations

from typing import Any

__all__ = ["Metrics"]


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "ragconf_requests", "HTTP requests by route and status", ["route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "ragconf_request_latency_seconds",
            "HTTP request latency by route (streams: until the last event)",
            ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.denials = Counter(
            "ragconf_denials", "Requests denied (401/403) by route", ["route"], registry=self.registry
        )
        self.refusals = Counter("ragconf_refusals", "Asks refused by the routing policy", registry=self.registry)
        self.tokens = Counter("ragconf_tokens", "Generator tokens", ["kind"], registry=self.registry)
        self.in_flight = Gauge("ragconf_in_flight", "Requests running or waiting for a worker", registry=self.registry)
        self.cache = Gauge(
            "ragconf_cache",
            "Process caches (query_embeddings, retrieval): hits, misses, hit_rate, saved_ms, entries",
            ["cache", "stat"],
            registry=self.registry,
        )

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)
        if status in (401, 403):
            self.denials.labels(route).inc()

    def answer(self, answer: Any) -> None:
        if answer.refused:
            self.refusals.inc()
        for kind, n in (answer.usage or {}).items():
            if n:
                self.tokens.labels(kind).inc(n)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        from ragconf.cache import cache_stats

        for name, stats in cache_stats().items():
            for stat, value in stats.items():
                self.cache.labels(name, stat).set(value)
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
