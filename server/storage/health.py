"""Tier health: degradation state logged once per change, and the circuit breaker in front of Redis."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

_ROUNDS = 3  # checks a request waits through before it uses Redis that was just checked


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
    """UNVERIFIED checks the repair log before use; CLOSED uses Redis; OPEN bypasses it; RECOVERING repairs."""

    UNVERIFIED = "unverified"
    CLOSED = "closed"
    OPEN = "open"
    RECOVERING = "recovering"


class CacheBreaker:
    """Circuit breaker for one shard of Redis: a dead or hung Redis costs one timeout per probe interval.

    A breaker starts UNVERIFIED: before its shard is first used (and again whenever ``unverify`` says the
    shard may have been written around, e.g. after a reconnect or a long silence), ``check`` runs: it
    repairs the shard if the store's repair log holds anything for it. The first failure opens the
    breaker. While open, requests bypass Redis and a background task probes every ``interval_s``. When a
    probe answers, ``recover`` runs (it repairs what went stale meanwhile) while new requests wait, and
    only then does the breaker close.

    Args:
        probe: a cheap Redis round trip that raises CacheUnavailableError.
        check: pings the shard and repairs it if the repair log says so (run before use); may raise.
        recover: repairs the shard unconditionally, fencing writes around Redis first; may raise.
        interval_s: the probe interval.
        on_change: told True when the breaker opens and False when it closes again.
    """

    def __init__(
        self,
        probe: Callable[[], Awaitable[None]],
        check: Callable[[], Awaitable[None]],
        recover: Callable[[], Awaitable[None]],
        interval_s: float,
        on_change: Callable[[bool, str], None],
    ) -> None:
        self._probe = probe
        self._check = check
        self._recover = recover
        self._interval_s = interval_s
        self._on_change = on_change
        self.state = BreakerState.UNVERIFIED
        # Set whenever the state is not RECOVERING; each recovery gets a fresh one, so a waiter that
        # arrives after the recovery ended never waits on a cleared event.
        self._ready = asyncio.Event()
        self._ready.set()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._down = False
        self._kick = asyncio.Event()
        self._attempted = asyncio.Event()

    @property
    def open(self) -> bool:
        """True from the failure that opened the breaker until its repair is done."""
        return self._down

    async def usable(self) -> bool:
        """Return True when requests may use Redis (verifying it, or waiting out a repair, first)."""
        for _ in range(_ROUNDS):
            if self.state is BreakerState.CLOSED:
                return True
            if self.state is BreakerState.OPEN or self._closed:
                return False
            if self.state is BreakerState.UNVERIFIED:
                self._recovering()
                self._task = asyncio.get_running_loop().create_task(self._verify())
            await asyncio.shield(self._ready.wait())
        # Checked again and again because connections keep opening (a pool growing under load): the
        # last check passed a moment ago, so Redis is usable; only an open breaker is not.
        return not self._open_now()

    def _open_now(self) -> bool:
        # A method, not an inline test, so that type narrowing before the await does not apply.
        return self.state is BreakerState.OPEN

    def _recovering(self) -> None:
        self.state = BreakerState.RECOVERING
        if self._ready.is_set():
            self._ready = asyncio.Event()

    def unverify(self) -> None:
        """Ask for a check of the repair log before the next use (a closed breaker only)."""
        if self.state is BreakerState.CLOSED:
            self.state = BreakerState.UNVERIFIED

    def trip(self, reason: str) -> None:
        """Open the breaker after a failure (no-op unless closed or unverified) and start probing."""
        if self.state not in (BreakerState.CLOSED, BreakerState.UNVERIFIED) or self._closed:
            return
        self._open(reason)

    def _open(self, reason: str) -> None:
        self.state = BreakerState.OPEN
        self._ready.set()  # wake requests that waited for a check: they bypass Redis
        if not self._down:
            self._down = True
            self._on_change(True, reason)
        self._kick.clear()
        self._task = asyncio.get_running_loop().create_task(self._probe_until_recovered())

    async def _verify(self) -> None:
        try:
            await self._check()
        except Exception as exc:  # noqa: BLE001 - any failure of the check keeps Redis bypassed
            self._task = None
            self._open(f"{type(exc).__name__}: {exc}")
            return
        self._close()

    def _close(self) -> None:
        self.state = BreakerState.CLOSED
        self._task = None
        self._ready.set()
        if self._down:
            self._down = False
            self._on_change(False, "")

    async def attempt(self) -> bool:
        """Probe and recover now instead of at the next interval (an open breaker); True once usable."""
        if self.state is BreakerState.OPEN and not self._closed and self._task is not None:
            done = self._attempted  # replaced after each attempt, so this waits for the next one
            self._kick.set()
            await asyncio.shield(done.wait())
        return await self.usable()

    def _attempt_ended(self) -> None:
        self._attempted.set()
        self._attempted = asyncio.Event()

    async def _probe_until_recovered(self) -> None:
        first = True
        while True:
            # The first probe goes at once: a Redis that was only slow (a busy machine) answers it, and its
            # requests use it again after one repair instead of an interval later. Then sleep one interval,
            # or less if a caller asks for an attempt now (attempt()).
            if not first:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._kick.wait(), self._interval_s)
            first = False
            self._kick.clear()
            try:
                await self._probe()
            except Exception:  # noqa: BLE001 - a probe that fails in any way keeps the breaker open
                self._attempt_ended()
                continue
            self._recovering()
            try:
                await self._recover()
            except Exception as exc:  # noqa: BLE001 - any failure of the repair keeps Redis bypassed
                log.warning("cache repair failed, still bypassing redis: %s", exc)
                self.state = BreakerState.OPEN
                self._ready.set()  # wake the requests that waited for the repair: they bypass Redis
                self._attempt_ended()
                continue
            self._close()
            self._attempt_ended()
            return

    async def close(self) -> None:
        """Stop probing (at shutdown) and release any waiters."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._ready.set()
        self._attempted.set()
