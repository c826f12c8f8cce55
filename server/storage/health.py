"""Tier health: degradation state logged once per change, and the circuit breaker in front of Redis."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Awaitable, Callable

from server.storage.protocols import CacheUnavailableError

log = logging.getLogger(__name__)


class TierHealth:
    """Whether a tier is down, logging each change of state exactly once.

    Args:
        name: the tier's name in log lines ("redis", "store").
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.down = False

    def mark_down(self, reason: str) -> None:
        """Record a failure; logs only on the change from up to down."""
        if not self.down:
            self.down = True
            log.warning("degraded: %s is unavailable (%s)", self.name, reason)

    def mark_up(self) -> None:
        """Record a success; logs only on the change from down to up."""
        if self.down:
            self.down = False
            log.warning("recovered: %s is available again", self.name)


class BreakerState(enum.Enum):
    """CLOSED uses Redis; OPEN bypasses it; RECOVERING repairs the cache before use resumes."""

    CLOSED = "closed"
    OPEN = "open"
    RECOVERING = "recovering"


class CacheBreaker:
    """Circuit breaker for Redis: a dead or hung Redis costs one timeout per probe interval, not per request.

    The first failure opens it. While open, requests bypass Redis and a background task probes every
    ``interval_s``. When a probe answers, ``recover`` runs (it repairs what went stale meanwhile) while
    new requests wait, and only then does the breaker close.

    Args:
        probe: a cheap Redis round trip that raises CacheUnavailableError.
        recover: repairs the cache; runs before the breaker closes.
        interval_s: the probe interval.
        health: the Redis tier's health record.
    """

    def __init__(
        self,
        probe: Callable[[], Awaitable[None]],
        recover: Callable[[], Awaitable[None]],
        interval_s: float,
        health: TierHealth,
    ) -> None:
        self._probe = probe
        self._recover = recover
        self._interval_s = interval_s
        self.health = health
        self.state = BreakerState.CLOSED
        self._ready = asyncio.Event()
        self._ready.set()
        self._task: asyncio.Task[None] | None = None

    async def usable(self) -> bool:
        """Return True when requests may use Redis (waiting out a recovery in progress)."""
        if self.state is BreakerState.RECOVERING:
            await self._ready.wait()
        return self.state is BreakerState.CLOSED

    def trip(self, reason: str) -> None:
        """Open the breaker after a failure (no-op unless closed) and start probing."""
        if self.state is not BreakerState.CLOSED:
            return
        self.state = BreakerState.OPEN
        self._ready.clear()
        self.health.mark_down(reason)
        self._task = asyncio.get_running_loop().create_task(self._probe_until_recovered())

    async def _probe_until_recovered(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self._probe()
            except CacheUnavailableError:
                continue
            self.state = BreakerState.RECOVERING
            try:
                await self._recover()
            except Exception as exc:  # noqa: BLE001 - any failure of the repair keeps Redis bypassed
                log.warning("cache repair failed, still bypassing redis: %s", exc)
                self.state = BreakerState.OPEN
                self._ready.set()  # wake the requests that waited for the repair: they bypass Redis
                self._ready.clear()
                continue
            self.state = BreakerState.CLOSED
            self.health.mark_up()
            self._ready.set()
            return

    async def close(self) -> None:
        """Stop probing (at shutdown) and release any waiters."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._ready.set()
