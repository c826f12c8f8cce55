"""The consistency policy: the only place that knows the order of cache and store.

write_through (this module's write path): the store commits first and assigns seqs (PERSISTED);
the cache window is then extended in commit order, or invalidated when it is not contiguous.
Reads try the cache; a miss hydrates from the store with one single-flight read per thread and
refills the window through a fenced script, so a stale read can never overwrite a newer write and
an expired key is never appended to. A cache that cannot answer is skipped (the response says
degraded); a store that cannot answer fails the request with UNAVAILABLE unless the cache can serve
it on its own. write_behind, which acknowledges once the outbox holds the write, is another write
path behind the same public methods.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from server.errors import NotFoundError, UnavailableError
from server.storage.codec import encode_messages
from server.storage.groupcommit import GroupCommitter
from server.storage.models import (
    AppendCommand,
    AppendResult,
    Durability,
    PreferenceChange,
    PreferenceSet,
    PreferenceValue,
    StoredMessage,
    ThreadCursor,
    ThreadInfo,
    ThreadKey,
    ThreadPatch,
    ThreadTail,
    Tier,
)
from server.storage.protocols import Cache, CacheUnavailableError, Store, StoreUnavailableError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Served:
    """How a request was served: the tier that answered and whether a tier was skipped."""

    tier: Tier
    degraded: bool = False


@dataclass(frozen=True, slots=True)
class AppendOutcome:
    """An acknowledged append."""

    result: AppendResult
    durability: Durability
    served: Served


@dataclass(frozen=True, slots=True)
class Window:
    """The recent window of a thread as encoded chatmem.v1.Message bytes, oldest first."""

    encoded: list[bytes]
    served: Served


@dataclass(frozen=True, slots=True)
class Preferences:
    """A user's preferences as read."""

    values: dict[str, PreferenceValue]
    served: Served


def _store_down(exc: StoreUnavailableError) -> UnavailableError:
    return UnavailableError(f"the durable store is unavailable: {exc}")


class Repository:
    """Threads and preferences over an optional cache and a durable store.

    Args:
        store: the durable tier.
        cache: the Redis tier, or None to run without L1.
        window: the cached window size (MEMORY__MAX_THREAD_MESSAGES).
        max_group: the most appends in one group commit.
    """

    def __init__(self, store: Store, cache: Cache | None, *, window: int, max_group: int = 256) -> None:
        self._store = store
        self._cache = cache
        self._window = window
        self._committer: GroupCommitter[AppendCommand, tuple[AppendResult, bool]] = GroupCommitter(
            self._commit_group, max_group
        )
        self._hydrations: dict[ThreadKey, asyncio.Future[ThreadTail | None]] = {}

    @property
    def window(self) -> int:
        """The cached window size."""
        return self._window

    async def close(self) -> None:
        """Finish the group commit in flight."""
        await self._committer.close()

    # --- threads: writes -------------------------------------------------------------------------

    async def append(self, command: AppendCommand) -> AppendOutcome:
        """Append messages (write_through): commit to the store, then extend the cache window."""
        try:
            result, degraded = await self._committer.submit(command)
        except StoreUnavailableError as exc:
            raise _store_down(exc) from exc
        return AppendOutcome(result, Durability.PERSISTED, Served(Tier.STORE, degraded))

    async def _commit_group(self, commands: Sequence[AppendCommand]) -> list[tuple[AppendResult, bool] | Exception]:
        results = await self._store.append_batch(commands)
        cache_failed: set[ThreadKey] = set()
        if self._cache is not None:
            cache_failed = await self._push_windows(self._cache, results)
        return [r if isinstance(r, Exception) else (r, r.thread_key in cache_failed) for r in results]

    async def _push_windows(self, cache: Cache, results: Sequence[AppendResult | Exception]) -> set[ThreadKey]:
        # One push per thread with all of the group's new messages of that thread, in seq order,
        # so that a group never invalidates its own window; threads go to Redis concurrently.
        per_thread: dict[ThreadKey, list[AppendResult]] = defaultdict(list)
        for r in results:
            if isinstance(r, AppendResult) and r.stored:
                per_thread[r.thread_key].append(r)
        failed: set[ThreadKey] = set()

        async def push(key: ThreadKey, group: list[AppendResult]) -> None:
            messages = [m for r in group for m in r.stored]
            try:
                await cache.push_window(
                    group[-1].thread, group[0].first_seq, encode_messages(key.workspace_id, key.thread_id, messages)
                )
            except CacheUnavailableError as exc:
                log.warning("cache push failed for %s: %s", key, exc)
                failed.add(key)

        await asyncio.gather(*(push(k, g) for k, g in per_thread.items()))
        return failed

    async def update_thread(self, key: ThreadKey, patch: ThreadPatch) -> tuple[ThreadInfo, Served]:
        """Change a thread's title, TTL or pin, then retune its cached window."""
        try:
            thread = await self._store.update_thread(key, patch)
        except StoreUnavailableError as exc:
            raise _store_down(exc) from exc
        if thread is None:
            raise NotFoundError(f"thread {key.thread_id!r} not found")
        degraded = False
        if self._cache is not None and (patch.ttl_seconds is not None or patch.pinned is not None):
            try:
                await self._cache.retune_window(thread)
            except CacheUnavailableError:
                degraded = True
        return thread, Served(Tier.STORE, degraded)

    async def delete_thread(self, key: ThreadKey) -> tuple[int, Served] | None:
        """Delete a thread from the store, then invalidate and tombstone its cached window."""
        try:
            deleted = await self._store.delete_thread(key)
        except StoreUnavailableError as exc:
            raise _store_down(exc) from exc
        if deleted is None:
            return None
        thread, count = deleted
        degraded = False
        if self._cache is not None:
            try:
                await self._cache.drop_window(thread)
            except CacheUnavailableError:
                degraded = True
        return count, Served(Tier.STORE, degraded)

    # --- threads: reads --------------------------------------------------------------------------

    async def history(self, key: ThreadKey, limit: int) -> Window:
        """Return the newest ``limit`` messages, from the cache when its window is valid."""
        degraded = False
        if self._cache is not None and limit <= self._window:
            try:
                encoded = await self._cache.read_window(key, limit)
            except CacheUnavailableError:
                encoded, degraded = None, True
            if encoded is not None:
                return Window(encoded, Served(Tier.CACHE))
        tail = await self._hydrate(key, max(limit, self._window), fill=not degraded)
        if tail is None:
            return Window([], Served(Tier.STORE, degraded))
        messages = tail.messages[-limit:] if limit else []
        return Window(encode_messages(key.workspace_id, key.thread_id, messages), Served(Tier.STORE, degraded))

    async def _hydrate(self, key: ThreadKey, limit: int, *, fill: bool) -> ThreadTail | None:
        # Single flight: concurrent misses of one thread share one store read and one fill.
        shared = limit == self._window
        pending = self._hydrations.get(key) if shared else None
        if pending is not None:
            try:
                return await asyncio.shield(pending)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not pending.cancelled() or (task is not None and task.cancelling()):
                    raise
                # The leader's RPC ended and took its load with it: load on our own.
        load = asyncio.ensure_future(self._load(key, limit, fill))
        if shared:
            self._hydrations[key] = load
            load.add_done_callback(lambda _: self._hydrations.pop(key, None))
        return await load

    async def _load(self, key: ThreadKey, limit: int, fill: bool) -> ThreadTail | None:
        try:
            tail = await self._store.tail(key, limit)
        except StoreUnavailableError as exc:
            raise _store_down(exc) from exc
        if tail is not None and fill and self._cache is not None and tail.messages:
            window = tail.messages[-self._window :]
            try:
                await self._cache.fill_window(tail.thread, encode_messages(key.workspace_id, key.thread_id, window))
            except CacheUnavailableError as exc:
                log.warning("cache fill failed for %s: %s", key, exc)
        return tail

    async def list_messages(self, key: ThreadKey, start_seq: int, reverse: bool, limit: int) -> list[StoredMessage]:
        """Return a keyset page of the full history (from the store)."""
        try:
            return await self._store.list_messages(key, start_seq, reverse, limit)
        except StoreUnavailableError as exc:
            raise _store_down(exc) from exc

    async def stream(self, key: ThreadKey, after_seq: int, chunk: int) -> AsyncIterator[list[StoredMessage]]:
        """Yield the history after ``after_seq`` in keyset chunks; memory stays one chunk."""
        next_seq = after_seq + 1
        while True:
            page = await self.list_messages(key, next_seq, False, chunk)
            if not page:
                return
            yield page
            if len(page) < chunk:
                return
            next_seq = page[-1].seq + 1

    async def get_thread(self, key: ThreadKey) -> ThreadInfo:
        """Return a thread's metadata or raise NotFoundError."""
        try:
            thread = await self._store.get_thread(key)
        except StoreUnavailableError as exc:
            raise _store_down(exc) from exc
        if thread is None:
            raise NotFoundError(f"thread {key.thread_id!r} not found")
        return thread

    async def list_threads(
        self, workspace_id: str, user_id: str, after: ThreadCursor | None, limit: int
    ) -> list[ThreadInfo]:
        """Return a page of a user's threads, newest first."""
        try:
            return await self._store.list_threads(workspace_id, user_id, after, limit)
        except StoreUnavailableError as exc:
            raise _store_down(exc) from exc

    # --- preferences -----------------------------------------------------------------------------

    async def get_preferences(self, workspace_id: str, user_id: str) -> Preferences:
        """Return a user's preferences, from the cache when it holds them."""
        degraded = False
        if self._cache is not None:
            try:
                cached = await self._cache.read_preferences(workspace_id, user_id)
            except CacheUnavailableError:
                cached, degraded = None, True
            if cached is not None:
                values = {k: PreferenceValue(v, us) for k, (v, us) in cached.items()}
                return Preferences(values, Served(Tier.CACHE))
        try:
            prefs: PreferenceSet = await self._store.get_preferences(workspace_id, user_id)
        except StoreUnavailableError as exc:
            raise _store_down(exc) from exc
        if self._cache is not None and not degraded:
            try:
                await self._cache.fill_preferences(workspace_id, user_id, prefs)
            except CacheUnavailableError:
                degraded = True
        return Preferences(prefs.values, Served(Tier.STORE, degraded))

    async def set_preferences(
        self, workspace_id: str, user_id: str, values: dict[str, str]
    ) -> tuple[PreferenceChange, Served]:
        """Upsert preferences in the store, then in the cache."""
        try:
            change = await self._store.set_preferences(workspace_id, user_id, values)
        except StoreUnavailableError as exc:
            raise _store_down(exc) from exc
        return change, await self._apply_preferences(workspace_id, user_id, change)

    async def delete_preferences(
        self, workspace_id: str, user_id: str, keys: Sequence[str] | None
    ) -> tuple[PreferenceChange, Served]:
        """Delete some or all preferences in the store, then in the cache."""
        try:
            change = await self._store.delete_preferences(workspace_id, user_id, keys)
        except StoreUnavailableError as exc:
            raise _store_down(exc) from exc
        return change, await self._apply_preferences(workspace_id, user_id, change)

    async def _apply_preferences(self, workspace_id: str, user_id: str, change: PreferenceChange) -> Served:
        if self._cache is None:
            return Served(Tier.STORE)
        try:
            await self._cache.apply_preferences(workspace_id, user_id, change)
        except CacheUnavailableError:
            return Served(Tier.STORE, True)
        return Served(Tier.STORE)
