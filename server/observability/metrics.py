"""Prometheus metrics: the series, the RPC layer that records them, and a sampler for pools, outbox and tiers.

Everything lives on a ``CollectorRegistry`` built per server (never the process-global default one), so
two servers in one process (as in the tests) keep separate numbers.
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from server.interceptors import Call, code_of
from server.storage.observer import CacheKind

QUOTA_KINDS = ("requests", "bytes", "in_flight", "streams")
# Cached reads take about a millisecond here; streams and stalled tiers take seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """Every ``chatmem_`` series, on one registry.

    It is also the repository's StorageObserver and the admission layer's observer.

    Args:
        registry: where to register; a new one by default.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.rpcs = Counter("chatmem_rpcs", "Finished chatmem RPCs.", ["method", "code"], registry=r)
        self.rpc_duration = Histogram(
            "chatmem_rpc_duration_seconds",
            "Server-side duration of chatmem RPCs (a stream: its whole length).",
            ["method", "code"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.cache_requests = Counter(
            "chatmem_cache_requests", "Reads that asked the Redis cache, by result.", ["kind", "result"], registry=r
        )
        self.hydrations = Counter(
            "chatmem_cache_hydrations", "Windows read from the store to fill the cache.", registry=r
        )
        self.outbox_depth = Gauge("chatmem_outbox_depth", "Entries in the write_behind outbox streams.", registry=r)
        self.outbox_oldest_age = Gauge(
            "chatmem_outbox_oldest_age_seconds", "Age of the oldest unflushed outbox entry (0 when empty).", registry=r
        )
        self.tier_up = Gauge(
            "chatmem_tier_up", "1 when the tier is in use, 0 while degraded (bypassed, failing).", ["tier"], registry=r
        )
        self.redis_pool = Gauge(
            "chatmem_redis_pool_connections", "Redis connection pool by state.", ["state"], registry=r
        )
        self.postgres_pool = Gauge(
            "chatmem_postgres_pool_connections", "PostgreSQL connection pool by state.", ["state"], registry=r
        )
        self.quota_rejections = Counter(
            "chatmem_quota_rejections", "Requests refused by quotas and admission, by kind.", ["kind"], registry=r
        )
        self._cache = {
            (kind, result): self.cache_requests.labels(kind, result)
            for kind in ("window", "preferences")
            for result in ("hit", "miss")
        }
        self._rejections = {kind: self.quota_rejections.labels(kind) for kind in QUOTA_KINDS}
        self._rpc_children: dict[tuple[str, grpc.StatusCode], tuple[Any, Any]] = {}

    # StorageObserver

    def cache_hit(self, kind: CacheKind) -> None:
        """Count a read answered by the cache."""
        self._cache[kind, "hit"].inc()

    def cache_miss(self, kind: CacheKind) -> None:
        """Count a read the cache could not answer."""
        self._cache[kind, "miss"].inc()

    def hydration(self) -> None:
        """Count a window filled from the store."""
        self.hydrations.inc()

    # AdmissionObserver

    def rejected(self, kind: str) -> None:
        """Count a request refused by quotas or admission."""
        child = self._rejections.get(kind)
        (child or self.quota_rejections.labels(kind)).inc()

    def observe_rpc(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        """Record one finished RPC."""
        children = self._rpc_children.get((method, code))
        if children is None:
            # Resolved once per (method, code): .labels() takes a lock and builds a key each time.
            children = (self.rpcs.labels(method, code.name), self.rpc_duration.labels(method, code.name))
            self._rpc_children[method, code] = children
        children[0].inc()
        children[1].observe(seconds)


class MetricsLayer:
    """Counts and times every chatmem RPC by method and final status code."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def around(self, call: Call) -> _Timed:
        """Return the timing scope of one RPC."""
        return _Timed(self._metrics, call)


class _Timed:
    __slots__ = ("_call", "_metrics", "_started")

    def __init__(self, metrics: Metrics, call: Call) -> None:
        self._metrics = metrics
        self._call = call
        self._started = 0.0

    async def __aenter__(self) -> None:
        self._started = time.perf_counter()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._metrics.observe_rpc(
            self._call.name, code_of(exc, self._call.context), time.perf_counter() - self._started
        )
