"""The admission layer: sheds load past the in-flight cap, caps streams per workspace, charges quotas.

It runs innermost, after authentication has fixed the request's workspace. Checks go cheapest first:
the in-flight count, the stream count, then the token buckets (one Redis script, or the local fallback).
Every refusal is RESOURCE_EXHAUSTED with a RetryInfo and is counted by kind.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Protocol

from server.admission.local import LocalQuota
from server.config import QuotaSettings
from server.errors import QuotaExceededError
from server.interceptors import Call
from server.storage.keys import KeySpace
from server.storage.protocols import CacheUnavailableError
from server.storage.quota import Rate, RedisQuota, Refusal
from server.validation import DEFAULT_WORKSPACE, is_valid_id

log = logging.getLogger(__name__)

STREAM_RETRY_S = 1.0


class AdmissionObserver(Protocol):
    """Told about every refusal (for metrics)."""

    def rejected(self, kind: str) -> None:
        """Note a refusal; ``kind`` is requests, bytes, in_flight or streams."""
        ...


class _Ignore:
    def rejected(self, kind: str) -> None:
        pass


def append_bytes(request: object) -> int:
    """Return the UTF-8 bytes of an AppendMessages request's message contents."""
    return sum(len(m.content.encode()) for m in getattr(request, "messages", ()))


class AdmissionLayer:
    """Admission control for chatmem RPCs.

    Args:
        max_in_flight: per-process concurrent RPCs (0 = no cap).
        in_flight_retry_s: the RetryInfo delay of a shed request.
        max_streams_per_workspace: per-process concurrent StreamHistory calls per workspace (0 = no cap).
        local: the in-process buckets, or None when no rate quota is set.
        shared: the Redis buckets, or None without Redis.
        redis_usable: False while the cache's circuit breaker bypasses Redis.
        retry_redis_s: after a failed quota call, how long to use the local buckets before Redis again.
        count_requests: charge every request (a request quota is set).
        count_bytes: charge appended bytes (an append-bytes quota is set).
        observer: counts refusals.
    """

    def __init__(
        self,
        *,
        max_in_flight: int,
        in_flight_retry_s: float,
        max_streams_per_workspace: int,
        local: LocalQuota | None,
        shared: RedisQuota | None,
        redis_usable: Callable[[], bool],
        retry_redis_s: float,
        count_requests: bool,
        count_bytes: bool,
        observer: AdmissionObserver | None = None,
    ) -> None:
        self.max_in_flight = max_in_flight
        self.in_flight_retry_s = in_flight_retry_s
        self.max_streams = max_streams_per_workspace
        self.local = local
        self.shared = shared
        self.redis_usable = redis_usable
        self.retry_redis_s = retry_redis_s
        self.count_requests = count_requests
        self.count_bytes = count_bytes
        self.per_workspace = bool(max_streams_per_workspace) or local is not None
        self.observer: AdmissionObserver = observer or _Ignore()
        self.in_flight = 0
        self.streams: dict[str, int] = {}
        self._redis_retry_at = 0.0

    def around(self, call: Call) -> _Admission:
        """Return the admission scope of one RPC."""
        return _Admission(self, call)

    def refuse(self, kind: str, message: str, retry_after_s: float) -> QuotaExceededError:
        """Count a refusal and build its error."""
        self.observer.rejected(kind)
        return QuotaExceededError(message, retry_after_s)

    async def charge(self, workspace_id: str, n_bytes: int) -> Refusal | None:
        """Charge the token buckets: Redis when usable, else (Redis down or failing) the local ones."""
        assert self.local is not None
        if self.shared is not None and self.redis_usable() and time.monotonic() >= self._redis_retry_at:
            try:
                refusal = await self.shared.take(workspace_id, n_bytes)
            except CacheUnavailableError as exc:
                if not self._redis_retry_at:
                    log.warning("quotas fall back to per-process buckets: redis failed (%s)", exc)
                # A frozen Redis costs one socket timeout per interval, not one per request.
                self._redis_retry_at = time.monotonic() + self.retry_redis_s
            else:
                if self._redis_retry_at:
                    self._redis_retry_at = 0.0
                    log.warning("quotas use the shared redis buckets again")
                return refusal
        return self.local.take(workspace_id, n_bytes)


class _Admission:
    __slots__ = ("_call", "_layer", "_stream_ws")

    def __init__(self, layer: AdmissionLayer, call: Call) -> None:
        self._layer = layer
        self._call = call
        self._stream_ws: str | None = None

    async def __aenter__(self) -> None:
        layer, call = self._layer, self._call
        if layer.max_in_flight and layer.in_flight >= layer.max_in_flight:
            raise layer.refuse(
                "in_flight", "the server is at its limit of concurrent requests", layer.in_flight_retry_s
            )
        layer.in_flight += 1
        if not layer.per_workspace:
            return
        try:
            ws = call.workspace_id or DEFAULT_WORKSPACE
            # An invalid workspace id is refused by validation right after this; it is not charged.
            if not is_valid_id(ws):
                return
            if layer.max_streams and call.streaming:
                open_streams = layer.streams.get(ws, 0)
                if open_streams >= layer.max_streams:
                    raise layer.refuse(
                        "streams", f"workspace {ws} has {open_streams} streams open (the limit)", STREAM_RETRY_S
                    )
                layer.streams[ws] = open_streams + 1
                self._stream_ws = ws
            n_bytes = append_bytes(call.request) if layer.count_bytes and call.name == "AppendMessages" else 0
            if layer.local is not None and (layer.count_requests or n_bytes):
                refusal = await layer.charge(ws, n_bytes)
                if refusal is not None:
                    raise layer.refuse(
                        refusal.kind, f"workspace {ws} is over its {refusal.kind} quota", refusal.retry_after_s
                    )
        except BaseException:
            self._release()
            raise

    def _release(self) -> None:
        layer = self._layer
        layer.in_flight -= 1
        ws = self._stream_ws
        if ws is not None:
            left = layer.streams[ws] - 1
            if left:
                layer.streams[ws] = left
            else:
                del layer.streams[ws]
            self._stream_ws = None

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._release()


def build_admission(
    quota: QuotaSettings,
    *,
    redis_client: Any,
    keys: KeySpace,
    redis_usable: Callable[[], bool],
    retry_redis_s: float,
    observer: AdmissionObserver | None,
) -> AdmissionLayer | None:
    """Build the layer from QUOTA__ settings, or return None when every limit is off.

    Args:
        quota: the QUOTA__ settings.
        redis_client: the Redis client, or None without Redis (the buckets are then per process).
        keys: the key space.
        redis_usable: False while the cache's circuit breaker bypasses Redis.
        retry_redis_s: how long a failed Redis quota call sends requests to the local buckets.
        observer: counts refusals.
    """
    requests = Rate.of(quota.requests_per_s, quota.requests_burst)
    append = Rate.of(quota.append_bytes_per_s, quota.append_bytes_burst)
    rated = requests is not None or append is not None
    if not (rated or quota.max_in_flight or quota.max_streams_per_workspace):
        return None
    return AdmissionLayer(
        max_in_flight=quota.max_in_flight,
        in_flight_retry_s=quota.in_flight_retry_s,
        max_streams_per_workspace=quota.max_streams_per_workspace,
        local=LocalQuota(requests, append) if rated else None,
        shared=RedisQuota(redis_client, keys, requests, append) if rated and redis_client is not None else None,
        redis_usable=redis_usable,
        retry_redis_s=retry_redis_s,
        count_requests=requests is not None,
        count_bytes=append is not None,
        observer=observer,
    )
