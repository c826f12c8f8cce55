"""Fork, truncate and compact a thread across both tiers: the store commits, then the cache forgets.

Each runs in the store under the thread row's lock, after (in write_behind) what was queued for the
thread when the call began has reached the store. Truncate deletes the seqs after ``after_seq`` that the
store holds at its commit: an append acknowledged before the call began is among them; one queued
while it runs and flushed after it commits is kept, with a larger seq (seqs are never reused). Then the
cached window is dropped under a new trim generation, so that no fill read before the change can
restore it, and the next read hydrates the thread as the store now has it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence

from server.errors import ThreadExistsError, UnavailableError
from server.storage.codec import encode_summary
from server.storage.events import ThreadEvents
from server.storage.models import (
    CompactResult,
    Fence,
    ForkResult,
    NewMessage,
    NewThreadOptions,
    ThreadInfo,
    ThreadKey,
    Tier,
    TruncateResult,
)
from server.storage.protocols import Cache, ReshapeStore, ThreadStore
from server.storage.results import Served
from server.storage.tiers import Tiers


class Reshaper:
    """Whole-thread changes over the cache and the store.

    Args:
        tiers: the cache, its breakers and repairs, and the store's health.
        store: the store's fork, truncate and compact.
        threads: the store's thread rows (to recognise a retried fork).
        await_flushed: waits until what was queued for a thread has reached the store (write_behind);
            False when Redis could not tell.
        write_behind: True when Redis holds queued appends the store has not seen yet.
        events: told of truncates (the watch hub).
    """

    def __init__(
        self,
        tiers: Tiers,
        store: ReshapeStore,
        threads: ThreadStore,
        await_flushed: Callable[[ThreadKey], Awaitable[bool]],
        write_behind: Callable[[], bool],
        events: Callable[[], ThreadEvents],
    ) -> None:
        self._tiers = tiers
        self._store = store
        self._threads = threads
        self._await_flushed = await_flushed
        self._write_behind = write_behind
        self._events = events

    async def _settled(self, key: ThreadKey) -> Fence | None:
        """Make the store whole for the thread; return the repair fence if the write goes around Redis."""
        if not await self._await_flushed(key):
            # Redis may hold acknowledged appends the store has not seen: changing the thread now
            # could lose them, or let them reappear after a truncate.
            raise UnavailableError("Redis is unavailable, so the thread's queued messages cannot be settled")
        if self._tiers.cache is not None and await self._tiers.usable_cache(key.bucket) is None:
            return await self._tiers.fence([key.bucket])
        return None

    async def _forget_window(self, thread: ThreadInfo, removed: int, message_ids: Sequence[str] = ()) -> bool:
        """Drop the cached window (and, after a truncate, the removed ids); mark a repair if Redis is down."""
        if self._tiers.cache is None:
            return False
        key = ThreadKey(thread.workspace_id, thread.thread_id)

        async def forget(cache: Cache) -> None:
            await cache.trim_thread(key, thread.incarnation, removed)
            if message_ids:
                await cache.forget_message_ids(key, message_ids)

        done, _ = await self._tiers.on_cache(key.bucket, forget)
        if not done:
            await self._tiers.mark_thread(key)
        return not done

    async def fork(
        self, source: ThreadKey, target: ThreadKey, through_seq: int | None, options: NewThreadOptions
    ) -> tuple[ForkResult, Served]:
        """Create ``target`` from ``source``'s messages up to ``through_seq`` (None: all)."""
        await self._settled(source)
        if self._write_behind():
            # A thread that exists only as queued appends is not in the store yet.
            used, queued = await self._tiers.on_cache(target.bucket, lambda c: c.thread_incarnation(target))
            if used and queued is not None:
                found = await self._tiers.on_store(self._threads.get_thread(target))
                if found is None or found.parent_thread_id != source.thread_id:
                    raise ThreadExistsError(target.thread_id)
        result = await self._tiers.on_store(self._store.fork_thread(source, target, through_seq, options))
        if result.copied and not result.replayed:
            self._events().appended(target, result.thread.last_seq)  # watchers of the new id wake now
        return result, Served(Tier.STORE, self._tiers.degraded(target.bucket))

    async def truncate(
        self, key: ThreadKey, after_seq: int, expected_last_seq: int | None, keep: int
    ) -> tuple[TruncateResult, Served]:
        """Remove the messages after ``after_seq``; return the newest ``keep`` removed and the thread."""

        async def once() -> tuple[TruncateResult, Served]:
            fence = await self._settled(key)
            result = await self._tiers.on_store(
                self._store.truncate_thread(key, after_seq, expected_last_seq, keep, repair=fence)
            )
            skipped = fence is not None or await self._forget_window(
                result.thread, result.removed_count, result.removed_ids
            )
            return result, Served(Tier.STORE, self._tiers.degraded(key.bucket, skipped))

        done = await self._tiers.fenced(once)
        self._events().removed(key)
        return done

    async def compact(
        self, key: ThreadKey, through_seq: int, summary: NewMessage, request_id: str
    ) -> tuple[CompactResult, Served]:
        """Record the summary that stands in for the messages up to ``through_seq``."""
        encoded = encode_summary(key.workspace_id, key.thread_id, through_seq, summary, time.time_ns() // 1000)

        async def once() -> tuple[CompactResult, Served]:
            fence = await self._settled(key)
            result = await self._tiers.on_store(
                self._store.compact_thread(key, through_seq, encoded, request_id, repair=fence)
            )
            skipped = fence is not None or await self._forget_window(result.thread, 0)
            return result, Served(Tier.STORE, self._tiers.degraded(key.bucket, skipped))

        return await self._tiers.fenced(once)
