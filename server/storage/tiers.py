"""Tier plumbing shared by the repository and erasure: which tier is usable, and the cache repair sweep.

A cache call that fails trips the breaker (health.py) and the request bypasses Redis, with ``degraded``
set; a store call that fails marks the store down and becomes UNAVAILABLE. Writes that go around Redis
are recorded in the store's repair log, and every recorded entry is repaired (its window and counter
dropped, so the next use reseeds from the store) before Redis is used again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar

from server.errors import UnavailableError
from server.storage.health import CacheBreaker, TierHealth
from server.storage.models import Repair, ThreadKey
from server.storage.protocols import Cache, CacheUnavailableError, MessageStore, RepairLog, StoreUnavailableError

T = TypeVar("T")

_REPAIR_PAGE = 500
_REPAIR_PAGES = 10_000


class Tiers:
    """The cache (optional) and the store, their health, and the breaker in front of Redis.

    Args:
        cache: the Redis tier, or None to run without L1.
        repairs: the store's repair log.
        messages: the store's messages (a repair reseeds a thread from them).
        probe_interval_s: how often a bypassed Redis is probed.
    """

    def __init__(
        self, cache: Cache | None, repairs: RepairLog, messages: MessageStore, probe_interval_s: float
    ) -> None:
        self.cache = cache
        self._repairs = repairs
        self._messages = messages
        self.store_health = TierHealth("store")
        self.breaker = (
            CacheBreaker(cache.ping, self._repair_cache, probe_interval_s, TierHealth("redis"))
            if cache is not None
            else None
        )
        self._bypassing = 0
        self._bypass_idle = asyncio.Event()
        self._bypass_idle.set()

    async def usable_cache(self) -> Cache | None:
        """Return the cache if requests may use it now, else None (none configured, or bypassed)."""
        if self.cache is None or self.breaker is None or not await self.breaker.usable():
            return None
        return self.cache

    async def on_cache(self, call: Callable[[Cache], Awaitable[T]]) -> tuple[bool, T | None]:
        """Run a cache call if Redis is usable; (False, None) if it is bypassed or just failed."""
        cache = await self.usable_cache()
        if cache is None:
            return False, None
        try:
            return True, await call(cache)
        except CacheUnavailableError as exc:
            self.trip(exc)
            return False, None

    def trip(self, exc: CacheUnavailableError) -> None:
        """Record a cache failure: requests bypass Redis until it answers and is repaired."""
        assert self.breaker is not None
        self.breaker.trip(str(exc))

    async def on_store(self, call: Awaitable[T]) -> T:
        """Await a store call; a store that cannot answer becomes UNAVAILABLE and is marked down."""
        try:
            out = await call
        except StoreUnavailableError as exc:
            self.store_health.mark_down(str(exc))
            raise UnavailableError(f"the durable store is unavailable: {exc}") from exc
        self.store_health.mark_up()
        return out

    def degraded(self, cache_skipped: bool = False) -> bool:
        """Tell whether a response is degraded: this request skipped the cache, or a tier is down."""
        redis_down = self.breaker is not None and self.breaker.health.down
        return cache_skipped or redis_down or self.store_health.down

    @contextlib.asynccontextmanager
    async def bypassing(self) -> AsyncIterator[None]:
        """Hold while a write goes around Redis: the repair sweep waits for such writes to land."""
        self._bypassing += 1
        self._bypass_idle.clear()
        try:
            yield
        finally:
            self._bypassing -= 1
            if self._bypassing == 0:
                self._bypass_idle.set()

    async def mark(self, repairs: Sequence[Repair]) -> None:
        """Record cache entries as possibly stale (a cache write may or may not have landed)."""
        await self.on_store(self._repairs.mark_repairs(repairs))

    async def mark_thread(self, key: ThreadKey) -> None:
        """Record a thread's cached window and counter as possibly stale."""
        await self.mark([Repair("t", key.workspace_id, key.thread_id)])

    async def _repair_cache(self) -> None:
        """Drop every cache entry that a write around Redis may have left stale (runs before Redis is used again)."""
        assert self.cache is not None
        await self._bypass_idle.wait()  # writes that chose the store path must land before the sweep
        for _ in range(_REPAIR_PAGES):
            repairs = await self.on_store(self._repairs.list_repairs(_REPAIR_PAGE))
            if not repairs:
                return
            for r in repairs:
                await self._repair_one(self.cache, r)
            await self.on_store(self._repairs.clear_repairs(repairs))
        raise UnavailableError("too many cache repairs to finish in one recovery")

    async def _repair_one(self, cache: Cache, repair: Repair) -> None:
        if repair.kind == "u":
            await cache.reset_preferences(repair.workspace_id, repair.object_id)
            return
        key = ThreadKey(repair.workspace_id, repair.object_id)
        seed = await self.on_store(self._messages.seed(key))
        if not seed.exists and seed.dead_incarnation:
            await cache.drop_thread(key, seed.dead_incarnation)
        else:
            await cache.reconcile_thread(key, seed)

    async def close(self) -> None:
        """Stop probing Redis."""
        if self.breaker is not None:
            await self.breaker.close()
