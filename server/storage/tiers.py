"""Tier plumbing shared by the repository, preferences and erasure: which tier is usable, and cache repairs.

Redis is used per shard: the whole of Redis, or on Redis Cluster one bucket (the slot group of a thread's
or a user's keys), so that a master that is down degrades only the buckets whose slots it holds. Each
shard has a breaker (health.py). A cache call that fails opens it and the request bypasses Redis, with
``degraded`` set; a store call that fails marks the store down and becomes UNAVAILABLE.

Repairs. A write that goes around Redis records its thread or user in the store's repair log, in the same
transaction, fenced by its bucket's epoch. Before a process uses a shard of Redis (at start-up, after
the shard's breaker was open, after a new connection to Redis, or after a silence longer than the
socket timeout, in which a stalled Redis could have made another replica give up on it) the repair log
is read for that shard. When it holds entries, the shard is recovered: its buckets' epochs are bumped
(from then on, a write around Redis made by a replica that still cannot reach it fails and does not
race the cache), then every entry is repaired (its window dropped and its counter raised to the store's,
so the next append seeds above every seq the store handed out), and only then is Redis used.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from server.errors import CacheDownError, StoreDownError, UnavailableError
from server.storage.buckets import BUCKETS
from server.storage.health import CacheBreaker, TierHealth
from server.storage.models import Fence, Repair, ThreadKey
from server.storage.protocols import (
    Cache,
    CacheFencedError,
    CacheUnavailableError,
    MessageStore,
    RepairLog,
    StoreUnavailableError,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

_REPAIR_PAGE = 500
_REPAIR_PAGES = 10_000
ALL = -1  # the shard of every bucket when Redis is one node


class Tiers:
    """The cache (optional) and the store, their health, and a breaker per shard of Redis.

    Args:
        cache: the Redis tier, or None to run without L1.
        repairs: the store's repair log.
        messages: the store's messages (a repair reseeds a thread from them).
        probe_interval_s: how often a bypassed shard is probed.
        silence_s: a shard unused for longer is checked against the repair log before its next use.
        call_bound_s: the longest a cache call can stay in flight (default: twice ``silence_s``, plus 0.5 s).
    """

    def __init__(
        self,
        cache: Cache | None,
        repairs: RepairLog,
        messages: MessageStore,
        probe_interval_s: float,
        silence_s: float = 0.5,
        call_bound_s: float | None = None,
    ) -> None:
        self.cache = cache
        self._repairs = repairs
        self._messages = messages
        self._probe_interval_s = probe_interval_s
        self._silence_s = silence_s
        self._call_bound_s = 2 * silence_s + 0.5 if call_bound_s is None else call_bound_s
        self._check_timeout_s = max(0.2, silence_s)
        self.store_health = TierHealth("store")
        # An in-process cache cannot be unreachable and nothing writes around it: no breaker, no health.
        self._local = cache is not None and cache.in_process
        self.redis_health = TierHealth("redis") if cache is not None and not self._local else None
        self._sharded = cache is not None and cache.sharded
        self._breakers: dict[int, CacheBreaker] = {}
        self._down: set[int] = set()
        self._last_ok: dict[int, float] = {}
        self._connects: dict[int, int] = {}
        self._epochs: Fence = {}
        self._verified: set[int] = set()
        self._inflight: dict[int, int] = {}
        self._idle: dict[int, asyncio.Event] = {}

    # --- shards and breakers ---------------------------------------------------------------------

    def shard(self, bucket: int) -> int:
        """Return the shard of a bucket: the bucket itself on Redis Cluster, else ALL."""
        return bucket if self._sharded else ALL

    def _buckets(self, shard: int) -> list[int] | None:
        return None if shard == ALL else [shard]

    def breaker(self, shard: int) -> CacheBreaker:
        """Return the shard's breaker (created on first use, UNVERIFIED)."""
        b = self._breakers.get(shard)
        if b is None:
            assert self.cache is not None
            cache = self.cache
            bucket = None if shard == ALL else shard
            b = CacheBreaker(
                lambda: cache.ping(bucket, fresh=True),
                lambda: self._check(shard),
                lambda: self._recover(shard, None),
                self._probe_interval_s,
                lambda down, reason: self._changed(shard, down, reason),
            )
            self._breakers[shard] = b
        return b

    def _changed(self, shard: int, down: bool, reason: str) -> None:
        assert self.redis_health is not None
        if down:
            self._down.add(shard)
            where = "" if shard == ALL else f" (bucket {shard})"
            self.redis_health.mark_down(f"{reason}{where}")
        else:
            self._down.discard(shard)
            if not self._down:
                self.redis_health.mark_up()

    async def usable_cache(self, bucket: int) -> Cache | None:
        """Return the cache if requests for this bucket may use it now, else None (none configured, or bypassed)."""
        if self.cache is None or self._local:
            return self.cache
        shard = self.shard(bucket)
        breaker = self.breaker(shard)
        # A new connection (Redis may have restarted) or a long silence (Redis may have stalled long
        # enough for another replica to write around it): check the repair log before the next use.
        if (
            self._connects.get(shard) != self.cache.connects
            or time.monotonic() - self._last_ok.get(shard, 0.0) > self._silence_s
        ):
            breaker.unverify()
        if not await breaker.usable():
            return None
        return self.cache

    async def on_cache(self, bucket: int, call: Callable[[Cache], Awaitable[T]]) -> tuple[bool, T | None]:
        """Run a cache call if the bucket's shard is usable; (False, None) if it is bypassed or just failed."""
        if self._local:
            assert self.cache is not None
            return True, await call(self.cache)
        cache = await self.usable_cache(bucket)
        if cache is None:
            return False, None
        # The call's start, not its end, counts as contact: a reply that arrives after a stall says
        # nothing about what other replicas did during it.
        started = time.monotonic()
        shard = self.shard(bucket)
        self._inflight[shard] = self._inflight.get(shard, 0) + 1
        try:
            out = await call(cache)
        except CacheUnavailableError as exc:
            self.trip(bucket, exc)
            return False, None
        finally:
            self._inflight[shard] -= 1
            if not self._inflight[shard] and shard in self._idle:
                self._idle.pop(shard).set()
        self._last_ok[shard] = max(started, self._last_ok.get(shard, 0.0))
        return True, out

    async def settle(self, bucket: int) -> None:
        """Wait until no call to the bucket's shard is in flight (each ends within ``call_bound_s``).

        A write about to go around Redis waits for this first: a call that was already on its way when
        another failed could otherwise still be numbered by Redis after the store numbered this one.
        """
        shard = self.shard(bucket)
        if self._inflight.get(shard, 0):
            idle = self._idle.setdefault(shard, asyncio.Event())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(idle.wait(), self._call_bound_s)

    def trip(self, bucket: int, exc: CacheUnavailableError) -> None:
        """Record a cache failure: requests for the shard bypass Redis until it answers and is repaired."""
        self.breaker(self.shard(bucket)).trip(str(exc))

    def cache_down(self, bucket: int | None = None) -> bool:
        """Tell whether the bucket's shard (None: any shard) is bypassed."""
        if bucket is None:
            return bool(self._down)
        return self.shard(bucket) in self._down

    async def retry_cache(self, buckets: Sequence[int]) -> bool:
        """After a fenced write: probe and recover the buckets' shards now; True if all can be used."""
        ok = True
        for shard in {self.shard(b) for b in buckets}:
            ok = await self.breaker(shard).attempt() and ok
        return ok

    async def fenced(self, op: Callable[[], Awaitable[T]]) -> T:
        """Run a write; if its write around Redis was fenced, recover those buckets here and run it again.

        A fence means another replica repaired the buckets and uses Redis for them again: this process
        must not number or change them through the store. If Redis answers here too, the write goes
        through it; if not, this replica alone cannot reach it, and the write is UNAVAILABLE.
        """
        try:
            return await op()
        except CacheFencedError as exc:
            if not await self.retry_cache(exc.buckets):
                raise CacheDownError(
                    "Redis serves this thread again for other replicas, but this one cannot reach it"
                ) from exc
        try:
            return await op()
        except CacheFencedError as exc:
            raise CacheDownError("Redis recovered for this thread only for other replicas; retry") from exc

    # --- the store -------------------------------------------------------------------------------

    async def on_store(self, call: Awaitable[T]) -> T:
        """Await a store call; a store that cannot answer becomes UNAVAILABLE and is marked down."""
        try:
            out = await call
        except StoreUnavailableError as exc:
            self.store_health.mark_down(str(exc))
            raise StoreDownError(f"the durable store is unavailable: {exc}") from exc
        self.store_health.mark_up()
        return out

    def degraded(self, bucket: int | None, cache_skipped: bool = False) -> bool:
        """Tell whether a response is degraded: it skipped the cache, or its tier (None: any tier) is down."""
        return cache_skipped or self.cache_down(bucket) or self.store_health.down

    async def fence(self, buckets: Sequence[int]) -> Fence:
        """Return the epochs a write around Redis for these buckets is made under.

        They are the epochs this process saw when it last checked or repaired the buckets' shards, so
        that a recovery by another replica since then fences the write out. A process that has never
        checked them (it started while Redis was down) reads the current ones. When it knows them, this
        does not suspend, so a caller takes them at the moment it decides to go around Redis.
        """
        missing = [b for b in set(buckets) if b not in self._epochs]
        if missing:
            self._epochs.update(await self.on_store(self._repairs.epochs(missing)))
        return {b: self._epochs[b] for b in set(buckets)}

    async def mark(self, repairs: Sequence[Repair]) -> None:
        """Record cache entries as possibly stale (a cache write may or may not have landed)."""
        await self.on_store(self._repairs.mark_repairs(repairs))

    async def mark_thread(self, key: ThreadKey) -> None:
        """Record a thread's cached window and counter as possibly stale."""
        await self.mark([Repair("t", key.workspace_id, key.thread_id)])

    # --- repairs ---------------------------------------------------------------------------------

    async def _check(self, shard: int) -> None:
        """Before a shard is used: ping it, then recover it if the repair log holds anything for it.

        Raises (the breaker then opens) when Redis does not answer, or when the repair log cannot be
        read and this process never checked the shard before.
        """
        assert self.cache is not None
        connects = self.cache.connects  # read first: a reconnect during the check is checked again
        await self.cache.ping(None if shard == ALL else shard)
        now = time.monotonic()
        buckets = self._buckets(shard)
        try:
            if self.store_health.down:
                raise StoreDownError("the store is down")
            # A shard never checked waits for the store however slow it is: it has no safe way to go on.
            async with asyncio.timeout(self._check_timeout_s if shard in self._verified else None):
                # The whole log first: it is empty unless an outage is being repaired, and then one read
                # clears every shard (a new connection on Redis Cluster would otherwise cost a read per
                # bucket). Epochs are recorded for usable shards only: an open shard keeps the epochs it
                # had when it failed, which fence its writes around Redis.
                if not await self.on_store(self._repairs.list_repairs(1, None)):
                    epochs = await self.on_store(self._repairs.epochs(None))
                    open_shards = {s for s, b in self._breakers.items() if b.open} - {shard}
                    self._epochs.update({b: e for b, e in epochs.items() if self.shard(b) not in open_shards})
                    for s in set(self._breakers) - open_shards:
                        self._verified_at(s, now, connects)
                    return
                pending = buckets is None or bool(await self.on_store(self._repairs.list_repairs(1, buckets)))
        except (UnavailableError, TimeoutError) as exc:
            # Nothing can be written around Redis while the store cannot commit, so a shard this process
            # checked before stays usable (cached windows keep serving); a shard it never checked does not.
            if shard not in self._verified:
                raise StoreDownError(f"cannot read the repair log before first use: {exc}") from exc
            log.warning("repair log not read before using redis again: %s", exc)
            self._verified_at(shard, now, connects)
            return
        if pending:
            await self._recover(shard, connects)
            return
        self._epochs.update(await self.on_store(self._repairs.epochs(buckets)))
        self._verified_at(shard, now, connects)

    def _verified_at(self, shard: int, now: float, connects: int) -> None:
        self._verified.add(shard)
        self._last_ok[shard] = max(now, self._last_ok.get(shard, 0.0))
        self._connects[shard] = connects

    async def _recover(self, shard: int, connects: int | None = None) -> None:
        """Fence writes around Redis for the shard, then drop every entry they may have left stale.

        The bump comes first: a write around Redis commits either before it (and is listed below) or
        not at all (its fence check fails), on PostgreSQL by the epoch rows' locks, on SQLite by the
        one writer.
        """
        assert self.cache is not None
        if connects is None:
            connects = self.cache.connects
        buckets = self._buckets(shard)
        self._epochs.update(await self.on_store(self._repairs.begin_recovery(buckets)))
        for _ in range(_REPAIR_PAGES):
            repairs = await self.on_store(self._repairs.list_repairs(_REPAIR_PAGE, buckets))
            if not repairs:
                self._verified_at(shard, time.monotonic(), connects)
                return
            for r in repairs:
                await self._repair_one(self.cache, r)
            await self.on_store(self._repairs.clear_repairs(repairs))
        raise CacheDownError("too many cache repairs to finish in one recovery")

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
        for b in list(self._breakers.values()):
            await b.close()


__all__ = ["ALL", "BUCKETS", "Tiers"]
