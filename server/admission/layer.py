"""The admission layer: sheds load past the in-flight cap, caps streams per workspace, charges quotas.

It runs innermost, after authentication has fixed the request's workspace. Checks go cheapest first:
the in-flight count; then, while the event loop lags (the process is short of CPU), the remaining
deadline against the time recent calls spent in the server (a call that cannot be answered in time is
refused at once, while the refusal can still reach its caller, instead of timing out in the queue); the
stream count; then the token buckets. Streams and buckets are kept in Redis,
shared by every replica; while Redis is down, failing or not configured they are kept in the process.
Every refusal is RESOURCE_EXHAUSTED with a RetryInfo and is counted by kind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from types import TracebackType
from typing import Any, Protocol

from server.admission.lag import LoopLag
from server.admission.local import LocalQuota
from server.admission.quota import Rate, RedisQuota, Refusal, StreamLeases
from server.config import QuotaSettings
from server.errors import QuotaExceededError
from server.interceptors import Call
from server.storage.protocols import CacheUnavailableError
from server.storage.redis.keys import KeySpace
from server.validation import DEFAULT_WORKSPACE, is_valid_id

log = logging.getLogger(__name__)

STREAM_RETRY_S = 1.0
# Below this the loop is keeping up: no deadline is checked. A slow call on a loop that keeps up waits on
# I/O (a slow store), and refusing others would not speed it up.
LAG_FLOOR_S = 0.01
# Weight of one unary call in the running mean of the time a call spends in the server per call in flight.
_COST_WEIGHT = 0.05
# A sample counts as at most this many times the estimate (plus the floor, so that it can grow from 0).
_OUTLIER_FACTOR = 4.0
_OUTLIER_FLOOR_S = 0.002
# The RetryInfo delay of a call shed for lag: the expected wait, but never minutes.
MAX_SHED_RETRY_S = 5.0
# Open-ended streams (mostly idle, capped by LIMITS__MAX_WATCHERS_PER_WORKSPACE): they take neither an
# in-flight slot, which sheds work, nor a StreamHistory slot, which would let watchers starve exports.
_OPEN_ENDED = frozenset({"WatchThread"})
# A crashed replica's stream slots come back after this; open streams renew every third of it.
STREAM_LEASE_S = 30.0


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
        lag: the event loop's lag, or None not to shed by deadline.
        shed_margin: while the loop lags, a call is refused when its remaining deadline is below this multiple
            of the time it would spend in the server: the calls in flight times the recent time per call in flight.
        max_streams_per_workspace: concurrent StreamHistory calls per workspace (0 = no cap).
        local: the in-process buckets, or None when no rate quota is set.
        shared: the Redis buckets, or None without Redis.
        leases: the Redis stream leases, or None without Redis.
        redis_usable: False while the cache's circuit breaker bypasses Redis.
        retry_redis_s: after a failed Redis call, how long to count locally before trying Redis again.
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
        lag: LoopLag | None = None,
        shed_margin: float = 0.0,
        local: LocalQuota | None,
        shared: RedisQuota | None,
        leases: StreamLeases | None,
        redis_usable: Callable[[], bool],
        retry_redis_s: float,
        count_requests: bool,
        count_bytes: bool,
        observer: AdmissionObserver | None = None,
    ) -> None:
        self.max_in_flight = max_in_flight
        self.in_flight_retry_s = in_flight_retry_s
        self.lag = lag
        self.shed_margin = shed_margin
        # Running mean of (a unary call's time from admission to its end) / (the calls in flight it joined):
        # by Little's law about 1 / throughput, so a new call is expected to take (in flight + 1) times it.
        self.per_call_s = 0.0
        self.max_streams = max_streams_per_workspace
        self.local = local
        self.shared = shared
        self.leases = leases
        self.redis_usable = redis_usable
        self.retry_redis_s = retry_redis_s
        self.count_requests = count_requests
        self.count_bytes = count_bytes
        self.observer: AdmissionObserver = observer or _Ignore()
        self.per_workspace = bool(max_streams_per_workspace) or local is not None
        self.in_flight = 0
        self.streams: dict[str, int] = {}  # open streams counted in this process (Redis unusable)
        self._redis_retry_at = 0.0
        self._renewer: asyncio.Task[None] | None = None

    def around(self, call: Call) -> _Admission:
        """Return the admission scope of one RPC."""
        return _Admission(self, call)

    def refuse(self, kind: str, message: str, retry_after_s: float) -> QuotaExceededError:
        """Count a refusal and build its error."""
        self.observer.rejected(kind)
        return QuotaExceededError(message, retry_after_s, {"limit": kind})

    # --- Redis or the process ---------------------------------------------------------------------

    def _use_redis(self) -> bool:
        return self.redis_usable() and time.monotonic() >= self._redis_retry_at

    def _redis_failed(self, exc: Exception) -> None:
        if not self._redis_retry_at:
            log.warning("quotas and stream caps fall back to per-process counts: redis failed (%s)", exc)
        # A frozen Redis costs one socket timeout per interval, not one per request.
        self._redis_retry_at = time.monotonic() + self.retry_redis_s

    def _redis_answered(self) -> None:
        if self._redis_retry_at:
            self._redis_retry_at = 0.0
            log.warning("quotas and stream caps use redis again")

    async def charge(self, workspace_id: str, n_bytes: int) -> Refusal | None:
        """Charge the token buckets: Redis when usable, else the local ones."""
        assert self.local is not None
        if self.shared is not None and self._use_redis():
            try:
                refusal = await self.shared.take(workspace_id, n_bytes)
            except CacheUnavailableError as exc:
                self._redis_failed(exc)
            else:
                self._redis_answered()
                return refusal
        return self.local.take(workspace_id, n_bytes)

    async def open_stream(self, workspace_id: str) -> str | None:
        """Take a stream slot; return the Redis lease's name, or None when counted in this process.

        Raises:
            QuotaExceededError: the workspace is at its cap.
        """
        if self.leases is not None and self._use_redis():
            try:
                member, count = await self.leases.acquire(workspace_id, self.max_streams)
            except CacheUnavailableError as exc:
                self._redis_failed(exc)
            else:
                self._redis_answered()
                if member is None:
                    raise self._streams_refused(workspace_id, count)
                return member
        count = self.streams.get(workspace_id, 0)
        if count >= self.max_streams:
            raise self._streams_refused(workspace_id, count)
        self.streams[workspace_id] = count + 1
        return None

    def _streams_refused(self, workspace_id: str, count: int) -> QuotaExceededError:
        return self.refuse("streams", f"workspace {workspace_id} has {count} streams open (the limit)", STREAM_RETRY_S)

    async def close_stream(self, workspace_id: str, member: str | None) -> None:
        """Give a stream slot back."""
        if member is None:
            left = self.streams[workspace_id] - 1
            if left:
                self.streams[workspace_id] = left
            else:
                del self.streams[workspace_id]
            return
        assert self.leases is not None
        try:
            await self.leases.release(workspace_id, member)
        except CacheUnavailableError as exc:
            log.debug("stream lease %s not released (it lapses by itself): %s", member, exc)

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        """Start measuring the loop's lag, and renewing the leases of open streams (when counted in Redis)."""
        if self.lag is not None:
            self.lag.start()
        if self.leases is not None and self.max_streams:
            self._renewer = asyncio.get_running_loop().create_task(self._renew_leases())

    async def _renew_leases(self) -> None:
        assert self.leases is not None
        while True:
            await asyncio.sleep(STREAM_LEASE_S / 3)
            try:
                await self.leases.renew()
            except CacheUnavailableError as exc:
                log.debug("cannot renew stream leases: %s", exc)

    async def stop(self) -> None:
        """Stop measuring the lag and renewing leases."""
        if self.lag is not None:
            self.lag.stop()
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None


class _Admission:
    __slots__ = ("_call", "_entered", "_joined", "_layer", "_started", "_stream")

    def __init__(self, layer: AdmissionLayer, call: Call) -> None:
        self._layer = layer
        self._call = call
        self._entered = False
        self._started = 0.0
        self._joined = 1
        self._stream: tuple[str, str | None] | None = None

    async def __aenter__(self) -> None:
        layer, call = self._layer, self._call
        open_ended = call.name in _OPEN_ENDED
        if not open_ended and layer.max_in_flight and layer.in_flight >= layer.max_in_flight:
            raise layer.refuse(
                "in_flight", "the server is at its limit of concurrent requests", layer.in_flight_retry_s
            )
        lag = layer.lag
        if lag is not None and lag.lag_s > LAG_FLOOR_S and not open_ended:
            remaining = call.context.time_remaining()
            expected = (layer.in_flight + 1) * layer.per_call_s
            if remaining is not None and remaining < expected * layer.shed_margin:
                raise layer.refuse(
                    "in_flight",
                    f"the server is overloaded: {remaining:.3f}s left of the deadline, a call takes about "
                    f"{expected:.3f}s here now",
                    min(max(layer.in_flight_retry_s, expected), MAX_SHED_RETRY_S),
                )
        if not open_ended:
            layer.in_flight += 1
            self._entered = True
            if not call.streaming:
                self._started = time.monotonic()
                self._joined = layer.in_flight
        if not layer.per_workspace:
            return
        try:
            ws = call.workspace_id or DEFAULT_WORKSPACE
            # An invalid workspace id is refused by validation right after this; it is not charged.
            if not is_valid_id(ws):
                return
            if layer.max_streams and call.streaming and not open_ended:
                self._stream = (ws, await layer.open_stream(ws))
            n_bytes = append_bytes(call.request) if layer.count_bytes and call.name == "AppendMessages" else 0
            if layer.local is not None and (layer.count_requests or n_bytes):
                refusal = await layer.charge(ws, n_bytes)
                if refusal is not None:
                    raise layer.refuse(
                        refusal.kind, f"workspace {ws} is over its {refusal.kind} quota", refusal.retry_after_s
                    )
        except BaseException:
            await self._release()
            raise

    async def _release(self) -> None:
        layer = self._layer
        if self._entered:
            layer.in_flight -= 1
            self._entered = False
            if self._started:
                per_call = (time.monotonic() - self._started) / self._joined
                # One slow call (a DeleteUser, a store that stalled) counts as at most a few typical ones:
                # the estimate judges CPU-bound queues, and an outlier must not make an idle server shed.
                per_call = min(per_call, _OUTLIER_FACTOR * layer.per_call_s + _OUTLIER_FLOOR_S)
                layer.per_call_s += (per_call - layer.per_call_s) * _COST_WEIGHT
                self._started = 0.0
        stream, self._stream = self._stream, None
        if stream is not None:
            await layer.close_stream(*stream)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._release()


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
        redis_client: the Redis client, or None without Redis (everything is then counted per process).
        keys: the key space.
        redis_usable: False while the cache's circuit breaker bypasses Redis.
        retry_redis_s: how long a failed Redis call sends requests to the per-process counts.
        observer: counts refusals.
    """
    requests = Rate.of(quota.requests_per_s, quota.requests_burst)
    append = Rate.of(quota.append_bytes_per_s, quota.append_bytes_burst)
    rated = requests is not None or append is not None
    if not (rated or quota.max_in_flight or quota.max_streams_per_workspace or quota.shed_margin):
        return None
    shared = redis_client is not None
    owner = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    return AdmissionLayer(
        max_in_flight=quota.max_in_flight,
        in_flight_retry_s=quota.in_flight_retry_s,
        max_streams_per_workspace=quota.max_streams_per_workspace,
        lag=LoopLag() if quota.shed_margin else None,
        shed_margin=quota.shed_margin,
        local=LocalQuota(requests, append) if rated else None,
        shared=RedisQuota(redis_client, keys, requests, append) if rated and shared else None,
        leases=(
            StreamLeases(redis_client, keys, owner=owner, lease_s=STREAM_LEASE_S)
            if quota.max_streams_per_workspace and shared
            else None
        ),
        redis_usable=redis_usable,
        retry_redis_s=retry_redis_s,
        count_requests=requests is not None,
        count_bytes=append is not None,
        observer=observer,
    )
