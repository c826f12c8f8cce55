"""The consistency policy: the only place that knows the order of cache, outbox and store.

Write paths (MEMORY__WRITE_MODE):
- write_through: the store commits first and assigns seqs (PERSISTED); the cache window is then
  extended in commit order, or invalidated when it is not contiguous. Concurrent appends are
  group-committed.
- write_behind: one script on the thread's slot checks the request id, assigns seqs from the Redis
  counter, extends the window and adds the messages to the bucket's outbox stream (QUEUED). The
  flusher (outbox.py) moves them to the store.

Seq authority. In write_behind the counter in the thread's Redis metadata is the authority while it
exists. When it does not (a new thread, an expired or evicted key, Redis restarted empty, or a repair
after an outage) the script asks for a seed: the store's last seq, raised to the newest seq still
queued in the outbox (the bucket's pending hash, which has no TTL). When Redis cannot be used, writes
go to the store, which numbers them: the first such write to a thread skips OUTBOX__MAX_UNFLUSHED_PER_THREAD
seqs, the most that the script lets a thread have queued and unflushed, so it can never reuse a seq
that Redis still holds; the thread is recorded in the store's cache_repairs table in the same
transaction. Before Redis is used again, every recorded thread's cached window and counter are
dropped, so the next append seeds above the store's seqs. Seqs therefore strictly increase and are
never reused; they are dense except for that one gap per thread per outage. If Redis restarts
empty without AOF, appends acknowledged as QUEUED but not yet flushed are lost (QUEUED promises what
Redis persistence promises), and their seqs may be given again to new messages; a stored message never
shares a seq with another.

Reads. A window read tries the cache. A miss (in write_behind, after waiting until the thread has
nothing left in the outbox) reads the store once per thread at a time and refills Redis through a
fenced script, so a stale read can never overwrite a newer write. Full-history reads (ListMessages,
StreamHistory, GetThread) in write_behind first wait until the thread's queued messages are flushed,
bounded by the RPC deadline: they return every message acknowledged before the read began.

Degradation: a cache that cannot answer trips a breaker (health.py) and requests bypass Redis, with
``degraded`` set; a store that cannot answer fails the request with UNAVAILABLE unless the cache can
serve it alone (cached windows, write_behind appends to threads Redis already counts).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from server.errors import AbortedError, NotFoundError, UnavailableError
from server.storage.codec import encode_messages, encode_unsequenced, frame_repeated
from server.storage.groupcommit import GroupCommitter
from server.storage.health import CacheBreaker, TierHealth
from server.storage.models import (
    AppendCommand,
    AppendResult,
    Durability,
    EncodedPage,
    EncodedTail,
    PreferenceChange,
    PreferenceValue,
    QueuedRequest,
    Repair,
    StoredMessage,
    ThreadCursor,
    ThreadInfo,
    ThreadKey,
    ThreadPatch,
    Tier,
    Trimmed,
)
from server.storage.observer import NoObserver, StorageObserver
from server.storage.protocols import Cache, CacheUnavailableError, Store, StoreUnavailableError

log = logging.getLogger(__name__)

T = TypeVar("T")
_FLUSH_POLL_S = 0.01


_BACKGROUND_GRACE_S = 2.0


class _Unknown:
    """The type of _UNKNOWN: no cache call has told yet what a thread has queued."""


_UNKNOWN = _Unknown()


def _consume_quietly(task: asyncio.Future[Any]) -> None:
    # A prefetch the caller no longer wants: retrieve its outcome so that it is never logged as lost.
    if not task.cancelled():
        task.exception()


@dataclass(frozen=True, slots=True)
class Served:
    """How a request was served: the tier that answered and whether a tier was unavailable."""

    tier: Tier
    degraded: bool = False


@dataclass(frozen=True, slots=True)
class AppendOutcome:
    """An acknowledged append."""

    first_seq: int
    count: int
    message_count: int
    replayed: bool
    durability: Durability
    served: Served

    @property
    def seqs(self) -> list[int]:
        """The seq of every appended message, in order."""
        return list(range(self.first_seq, self.first_seq + self.count))


@dataclass(frozen=True, slots=True)
class Window:
    """The recent window of a thread, oldest first.

    ``framed`` is the messages framed as repeated field 1: a serialised GetHistoryResponse holding
    only its ``messages``.
    """

    framed: bytes
    served: Served


@dataclass(frozen=True, slots=True)
class Preferences:
    """A user's preferences as read."""

    values: dict[str, PreferenceValue]
    served: Served


@dataclass(frozen=True, slots=True)
class UserErasure:
    """What DeleteUser deleted: threads, messages in the store, and preference keys."""

    threads: int
    messages: int
    preferences: int
    served: Served


@dataclass(frozen=True, slots=True)
class Policy:
    """The repository's settings.

    Args:
        window: the cached window size (MEMORY__MAX_THREAD_MESSAGES).
        write_behind: acknowledge appends once Redis has queued them.
        default_ttl_s: the default sliding TTL of a window.
        request_ttl_s: how long Redis remembers request ids (write_behind).
        max_unflushed: the most queued, unflushed messages per thread; also the fallback seq gap.
        probe_interval_s: how often a bypassed Redis is probed.
        max_group: the most appends in one group commit.
    """

    window: int
    write_behind: bool = False
    default_ttl_s: int = 24 * 3600
    request_ttl_s: int = 24 * 3600
    max_unflushed: int = 100_000
    probe_interval_s: float = 1.0
    max_group: int = 256


class Repository:
    """Threads and preferences over an optional cache and a durable store.

    Args:
        store: the durable tier.
        cache: the Redis tier, or None to run without L1.
        policy: the consistency settings.
        observer: receives cache hits, misses and hydrations (for metrics).
    """

    def __init__(
        self, store: Store, cache: Cache | None, policy: Policy, observer: StorageObserver | None = None
    ) -> None:
        self._store = store
        self._cache = cache
        self._policy = policy
        self._observer = observer or NoObserver()
        self.store_health = TierHealth("store")
        self.breaker = (
            CacheBreaker(cache.ping, self._repair_cache, policy.probe_interval_s, TierHealth("redis"))
            if cache is not None
            else None
        )
        self._committer: GroupCommitter[AppendCommand, tuple[AppendResult, bool]] = GroupCommitter(
            self._commit_group, policy.max_group
        )
        self._hydrations: dict[ThreadKey, asyncio.Future[EncodedTail | None]] = {}
        self._background: set[asyncio.Future[object]] = set()
        self._bypassing = 0
        self._bypass_idle = asyncio.Event()
        self._bypass_idle.set()

    @property
    def window(self) -> int:
        """The cached window size."""
        return self._policy.window

    @property
    def write_behind(self) -> bool:
        """True when appends are acknowledged from the outbox."""
        return self._policy.write_behind and self._cache is not None

    async def close(self) -> None:
        """Finish the group commit in flight and the cache fills under way, and stop probing Redis."""
        await self._committer.close()
        if self._background:
            await asyncio.wait(set(self._background), timeout=_BACKGROUND_GRACE_S)
            for task in set(self._background):  # the cache closes next: fills still running are abandoned
                task.cancel()
        if self.breaker is not None:
            await self.breaker.close()

    # --- tier plumbing ---------------------------------------------------------------------------

    async def _usable_cache(self) -> Cache | None:
        if self._cache is None or self.breaker is None or not await self.breaker.usable():
            return None
        return self._cache

    async def _on_cache(self, call: Callable[[Cache], Awaitable[T]]) -> tuple[bool, T | None]:
        """Run a cache call if Redis is usable; (False, None) if it is bypassed or just failed."""
        cache = await self._usable_cache()
        if cache is None:
            return False, None
        try:
            return True, await call(cache)
        except CacheUnavailableError as exc:
            assert self.breaker is not None
            self.breaker.trip(str(exc))
            return False, None

    async def _on_store(self, call: Awaitable[T]) -> T:
        try:
            out = await call
        except StoreUnavailableError as exc:
            self.store_health.mark_down(str(exc))
            raise UnavailableError(f"the durable store is unavailable: {exc}") from exc
        self.store_health.mark_up()
        return out

    def _degraded(self, cache_skipped: bool = False) -> bool:
        redis_down = self.breaker is not None and self.breaker.health.down
        return cache_skipped or redis_down or self.store_health.down

    def _bypass_started(self) -> None:
        self._bypassing += 1
        self._bypass_idle.clear()

    def _bypass_ended(self) -> None:
        self._bypassing -= 1
        if self._bypassing == 0:
            self._bypass_idle.set()

    async def _repair_cache(self) -> None:
        """Drop every cache entry that a write around Redis may have left stale (runs before Redis is used again)."""
        assert self._cache is not None
        await self._bypass_idle.wait()  # writes that chose the store path must land before the sweep
        for _ in range(10_000):
            repairs = await self._on_store(self._store.list_repairs(500))
            if not repairs:
                return
            for r in repairs:
                await self._repair_one(self._cache, r)
            await self._on_store(self._store.clear_repairs(repairs))
        raise UnavailableError("too many cache repairs to finish in one recovery")

    async def _repair_one(self, cache: Cache, repair: Repair) -> None:
        if repair.kind == "u":
            await cache.reset_preferences(repair.workspace_id, repair.object_id)
            return
        key = ThreadKey(repair.workspace_id, repair.object_id)
        seed = await self._on_store(self._store.seed(key))
        if not seed.exists and seed.dead_incarnation:
            await cache.drop_thread(key, seed.dead_incarnation)
        else:
            await cache.reconcile_thread(key, seed)

    async def _await_flushed(self, key: ThreadKey, known: tuple[int, int] | _Unknown | None = _UNKNOWN) -> None:
        """In write_behind, wait (within the RPC's deadline) for what was queued when the read began.

        Later appends do not extend the wait, so a thread that is written all the time can still be read.
        ``known`` is the thread's state as a read that just missed found it, which saves asking again.
        """
        if not self.write_behind:
            return
        target = None
        while True:
            if isinstance(known, _Unknown):
                used, state = await self._on_cache(lambda c: c.pending_seq(key))
            else:
                used, state, known = True, known, _UNKNOWN
            if not used or state is None:
                return
            newest, flushed = state
            target = newest if target is None else target
            if flushed >= target:
                return
            if self.store_health.down:
                raise UnavailableError("the durable store is unavailable; queued messages cannot be read in full")
            await asyncio.sleep(_FLUSH_POLL_S)

    # --- threads: writes -------------------------------------------------------------------------

    async def append(self, command: AppendCommand) -> AppendOutcome:
        """Append messages, by the configured write path (falling back to the store without Redis)."""
        outcome = await self._append(command)
        # A load that started before this write must not answer a read that starts after it.
        self._hydrations.pop(command.key, None)
        return outcome

    async def _append(self, command: AppendCommand) -> AppendOutcome:
        if self.write_behind:
            used, outcome = await self._on_cache(lambda c: self._append_queued(c, command))
            if used and outcome is not None:
                return outcome
        self._bypass_started()
        try:
            result, degraded = await self._on_store(self._committer.submit(command))
        finally:
            self._bypass_ended()
        return AppendOutcome(
            result.first_seq,
            result.count,
            result.message_count,
            result.replayed,
            Durability.PERSISTED,
            Served(Tier.STORE, self._degraded(degraded)),
        )

    async def _append_queued(self, cache: Cache, command: AppendCommand) -> AppendOutcome:
        key = command.key
        now_us = time.time_ns() // 1000
        options = command.new_thread
        request = QueuedRequest(
            key=key,
            encoded=tuple(encode_unsequenced(key.workspace_id, key.thread_id, m, now_us) for m in command.messages),
            request_id=command.request_id,
            expected_last_seq=command.expected_last_seq,
            new_ttl_s=options.ttl_seconds or self._policy.default_ttl_s,
            options_json="",  # read by the script only on a seeded call (a new counter): sent then
            request_ttl_s=self._policy.request_ttl_s,
            max_unflushed=self._policy.max_unflushed,
        )
        reply = await cache.append_queued(request)
        if reply.kind == "seed":
            if command.expected_last_seq not in (None, 0) and not await self._thread_known(key):
                raise AbortedError(f"thread {key.thread_id!r} is new, expected last seq {command.expected_last_seq}")
            seed = await self._on_store(self._store.seed(key, create=options))
            ttl = 0 if seed.pinned else (seed.ttl_seconds or self._policy.default_ttl_s)
            if not seed.exists:
                ttl = request.new_ttl_s
            options_json = json.dumps(
                {"user_id": options.user_id, "title": options.title, "ttl_seconds": options.ttl_seconds}
            )
            reply = await cache.append_queued(
                dataclasses.replace(request, seed=seed, new_ttl_s=ttl, options_json=options_json)
            )
        if reply.kind == "aborted":
            raise AbortedError(
                f"thread {key.thread_id!r} has last seq {reply.value}, expected {command.expected_last_seq}"
            )
        if reply.kind == "backlog":
            raise UnavailableError(
                f"thread {key.thread_id!r} has {reply.value} messages waiting for the store; retry later"
            )
        if reply.kind not in ("ok", "dup"):
            raise UnavailableError(f"unexpected reply from the append script: {reply.kind}")
        return AppendOutcome(
            reply.first,
            reply.count,
            reply.message_count,
            reply.kind == "dup",
            Durability.QUEUED,
            Served(Tier.CACHE, self._degraded()),
        )

    async def _thread_known(self, key: ThreadKey) -> bool:
        seed = await self._on_store(self._store.seed(key))
        return seed.exists

    async def _commit_group(self, commands: Sequence[AppendCommand]) -> list[tuple[AppendResult, bool] | Exception]:
        cache = None if self.write_behind else await self._usable_cache()
        bypassed = self._cache is not None and cache is None
        # In write_behind mode this path runs only around Redis, so it always leaves the fallback gap.
        gap = self._policy.max_unflushed if self.write_behind else 0
        try:
            results = await self._store.append_batch(commands, repair=bypassed, fallback_gap=gap)
        except StoreUnavailableError:
            raise
        except Exception:
            if len(commands) == 1:
                raise
            # One request the store rejects must not fail the others that shared its transaction.
            log.exception("a group commit failed; committing its %d appends one by one", len(commands))
            results = []
            for command in commands:
                try:
                    results += await self._store.append_batch([command], repair=bypassed, fallback_gap=gap)
                except StoreUnavailableError:
                    raise
                except Exception as exc:  # noqa: BLE001 - reported to that request's caller as INTERNAL
                    results.append(exc)
        failed: set[ThreadKey] = set()
        if cache is not None:
            failed = await self._push_windows(cache, results)
        return [r if isinstance(r, Exception) else (r, bypassed or r.thread_key in failed) for r in results]

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
                assert self.breaker is not None
                self.breaker.trip(str(exc))
                failed.add(key)

        await asyncio.gather(*(push(k, g) for k, g in per_thread.items()))
        if failed:
            # The push may have landed or not: mark the windows for repair before Redis is used again.
            await self._store.mark_repairs([Repair("t", k.workspace_id, k.thread_id) for k in failed])
        return failed

    async def update_thread(self, key: ThreadKey, patch: ThreadPatch) -> tuple[ThreadInfo, Served]:
        """Change a thread's title, TTL or pin, then retune its cached window."""
        await self._await_flushed(key)
        cache = await self._usable_cache()
        thread = await self._on_store(
            self._store.update_thread(key, patch, repair=self._cache is not None and cache is None)
        )
        if thread is None:
            raise NotFoundError(f"thread {key.thread_id!r} not found")
        skipped = cache is None and self._cache is not None
        if cache is not None and (patch.ttl_seconds is not None or patch.pinned is not None):
            used, _ = await self._on_cache(lambda c: c.retune_window(thread))
            skipped = not used
        return thread, Served(Tier.STORE, self._degraded(skipped))

    async def delete_thread(self, key: ThreadKey, *, idle_before_us: int | None = None) -> tuple[int, Served] | None:
        """Delete a thread from the store (with a tombstone), then from Redis, outbox marker included.

        Args:
            key: the thread.
            idle_before_us: delete it only if the store saw no change to it since then (retention).

        Returns:
            (messages deleted from the store, how it was served), or None if nothing was deleted.
        """
        used, incarnation = await self._on_cache(lambda c: c.thread_incarnation(key))
        bypassed = self._cache is not None and not used
        thread, count = await self._on_store(
            self._store.delete_thread(
                key, tombstone_incarnation=incarnation or 0, repair=bypassed, idle_before_us=idle_before_us
            )
        )
        if thread is None and (not incarnation or idle_before_us is not None):
            return None
        dead = max(incarnation or 0, thread.incarnation if thread else 0)
        if not bypassed:
            dropped, _ = await self._on_cache(lambda c: c.drop_thread(key, dead))
            if not dropped:
                await self._on_store(self._store.mark_repairs([Repair("t", key.workspace_id, key.thread_id)]))
                bypassed = True
        return count, Served(Tier.STORE, self._degraded(bypassed))

    # --- erasure and retention ---------------------------------------------------------------------

    async def delete_user(self, workspace_id: str, user_id: str, page_size: int = 200) -> UserErasure:
        """Delete every thread and every preference of a user, from both tiers and the outbox.

        The user's threads are listed newest first in keyset pages, and each is deleted as by
        ``delete_thread`` (store tombstone, then the Redis window, counter and outbox marker), so a
        queued append of a deleted incarnation is skipped when it flushes. Threads created after the
        listing passed their place are not visited, so the call always ends. Then all preferences are
        deleted (store first, then the cached hash).

        Raises:
            UnavailableError: the store is down; what was deleted so far stays deleted.
        """
        threads = messages = 0
        degraded = False
        after: ThreadCursor | None = None
        while True:
            page = await self.list_threads(workspace_id, user_id, after, page_size)
            for t in page:
                deleted = await self.delete_thread(ThreadKey(t.workspace_id, t.thread_id))
                if deleted is not None:
                    threads += 1
                    messages += deleted[0]
                    degraded = degraded or deleted[1].degraded
            if len(page) < page_size:
                break
            after = ThreadCursor(page[-1].create_time_us, page[-1].thread_id)
        change, served = await self.delete_preferences(workspace_id, user_id, None)
        return UserErasure(threads, messages, change.affected, Served(Tier.STORE, degraded or served.degraded))

    async def expire_idle_threads(self, cutoff_us: int, batch: int) -> tuple[int, int]:
        """Retention: delete threads the store saw no change to since ``cutoff_us``; return (threads, messages).

        Each goes through ``delete_thread`` (tombstone, then Redis), re-checked as idle inside the store's
        delete. In write_behind a thread with appends still queued in the outbox is active and is skipped,
        and nothing is expired while Redis cannot be asked, since its queued appends would be invisible.
        """
        if self.write_behind and await self._usable_cache() is None:
            return 0, 0
        threads = messages = 0
        after: ThreadInfo | None = None
        while True:
            page = await self._on_store(self._store.idle_threads(cutoff_us, after, batch))
            for t in page:
                key = ThreadKey(t.workspace_id, t.thread_id)
                if self.write_behind:
                    used, pending = await self._pending(key)
                    if not used:
                        return threads, messages
                    if pending is not None:
                        continue
                deleted = await self.delete_thread(key, idle_before_us=cutoff_us)
                if deleted is not None:
                    threads += 1
                    messages += deleted[0]
            if len(page) < batch:
                return threads, messages
            after = page[-1]

    async def trim_old_messages(self, cutoff_us: int, batch: int) -> tuple[int, int]:
        """Retention: delete messages created before ``cutoff_us`` in batches; return (messages, threads touched).

        A thread that lost messages has its cached window dropped (refilled from the store on the next
        read, so no deleted message is served) and its write_behind counted length lowered; if Redis
        cannot be reached the thread is marked for repair, which drops the window before Redis is used.
        """
        messages = 0
        touched: set[ThreadKey] = set()
        while True:
            trimmed = await self._on_store(self._store.trim_messages(cutoff_us, batch))
            for t in trimmed:
                messages += t.count
                touched.add(t.key)
                if self._cache is not None:
                    await self._trim_cached(t)
            if sum(t.count for t in trimmed) < batch:
                return messages, len(touched)

    async def _pending(self, key: ThreadKey) -> tuple[bool, tuple[int, int] | None]:
        return await self._on_cache(lambda c: c.pending_seq(key))

    async def _trim_cached(self, trimmed: Trimmed) -> None:
        done, _ = await self._on_cache(lambda c: c.trim_thread(trimmed.key, trimmed.incarnation, trimmed.count))
        if not done:
            key = trimmed.key
            await self._on_store(self._store.mark_repairs([Repair("t", key.workspace_id, key.thread_id)]))

    # --- threads: reads --------------------------------------------------------------------------

    async def history(self, key: ThreadKey, limit: int) -> Window:
        """Return the newest ``limit`` messages, from the cache when its window is valid."""
        used = False
        known: tuple[int, int] | _Unknown | None = _UNKNOWN
        fence: int | None = None
        if limit <= self._policy.window:
            # One round trip answers a hit, or tells a miss the fence its fill must pass back and (in
            # write_behind) what is still queued for this thread.
            used, read = await self._on_cache(lambda c: c.read_window_or_pending(key, limit))
            items = None if read is None else read.items
            if read is not None and items is None:
                fence = read.fence
                known = read.pending if self.write_behind else _UNKNOWN
            if items is not None:
                self._observer.cache_hit("window")
                return Window(b"".join(items), Served(Tier.CACHE, self._degraded()))
            if used:
                self._observer.cache_miss("window")
        await self._await_flushed(key, known)
        skipped = self._cache is not None and not used
        loaded = await self._hydrate(key, max(limit, self._policy.window), fill=not skipped, fence=fence)
        served = Served(Tier.STORE, self._degraded(skipped))
        if loaded is None:
            return Window(b"", served)
        encoded = loaded.items[-limit:] if limit else []
        return Window(frame_repeated(1, encoded), served)

    async def _hydrate(self, key: ThreadKey, limit: int, *, fill: bool, fence: int | None) -> EncodedTail | None:
        # Single flight: concurrent misses of one thread share one store read and one fill.
        shared = limit == self._policy.window
        pending = self._hydrations.get(key) if shared else None
        if pending is not None:
            try:
                return await asyncio.shield(pending)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not pending.cancelled() or (task is not None and task.cancelling()):
                    raise
                # The leader's RPC ended and took its load with it: load on our own.
        load = asyncio.ensure_future(self._load(key, limit, fill, fence))
        if shared:
            self._hydrations[key] = load

            def forget(_: object) -> None:
                if self._hydrations.get(key) is load:
                    del self._hydrations[key]

            load.add_done_callback(forget)
        return await load

    async def _load(self, key: ThreadKey, limit: int, fill: bool, fence: int | None) -> EncodedTail | None:
        tail = await self._on_store(self._store.encoded_tail(key, limit))
        if tail is None:
            return None
        if fill and tail.items:
            self._observer.hydration()
            # The read answers without waiting for the fill: the fill script is fenced (a newer write, a
            # delete or a retention trim refuses it), so landing late is safe, and a read before it
            # lands hydrates again.
            window = tail.items[-self._policy.window :]
            self._in_background(self._on_cache(lambda c: c.fill_window(tail.thread, window, fence)))
        return tail

    def _in_background(self, work: Awaitable[object]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Future[object]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("a background cache fill failed", exc_info=task.exception())

    async def list_messages(self, key: ThreadKey, start_seq: int, reverse: bool, limit: int) -> list[StoredMessage]:
        """Return a keyset page of the full history (from the store, after queued messages are flushed)."""
        await self._await_flushed(key)
        return await self._on_store(self._store.list_messages(key, start_seq, reverse, limit))

    async def stream(self, key: ThreadKey, after_seq: int, chunk: int) -> AsyncIterator[list[bytes]]:
        """Yield the history after ``after_seq`` as serialised Messages, in keyset pages of ``chunk``.

        The next page loads while the caller sends this one, so the store's latency overlaps the
        network's; memory stays two pages.
        """
        await self._await_flushed(key)

        def load(start: int) -> asyncio.Future[EncodedPage]:
            return asyncio.ensure_future(self._on_store(self._store.encoded_page(key, start, chunk)))

        pending = load(after_seq + 1)
        try:
            while True:
                page = await pending
                if len(page.items) < chunk:
                    if page.items:
                        yield page.items
                    return
                pending = load(page.last_seq + 1)
                yield page.items
        finally:
            if not pending.done():
                pending.cancel()
            pending.add_done_callback(_consume_quietly)  # a prefetch nobody awaits: take its outcome

    async def get_thread(self, key: ThreadKey) -> ThreadInfo:
        """Return a thread's metadata or raise NotFoundError."""
        await self._await_flushed(key)
        thread = await self._on_store(self._store.get_thread(key))
        if thread is None:
            raise NotFoundError(f"thread {key.thread_id!r} not found")
        return thread

    async def list_threads(
        self, workspace_id: str, user_id: str, after: ThreadCursor | None, limit: int
    ) -> list[ThreadInfo]:
        """Return a page of a user's threads, newest first (threads still only queued appear once flushed)."""
        return await self._on_store(self._store.list_threads(workspace_id, user_id, after, limit))

    def served_by_store(self) -> Served:
        """How a store-only read is reported (degraded while a tier is down)."""
        return Served(Tier.STORE, self._degraded())

    # --- preferences (always written through: they are small and rarely written) -------------------

    async def get_preferences(self, workspace_id: str, user_id: str) -> Preferences:
        """Return a user's preferences, from the cache when it holds them."""
        used, cached = await self._on_cache(lambda c: c.read_preferences(workspace_id, user_id))
        if cached is not None:
            self._observer.cache_hit("preferences")
            values = {k: PreferenceValue(v, us) for k, (v, us) in cached.items()}
            return Preferences(values, Served(Tier.CACHE, self._degraded()))
        if used:
            self._observer.cache_miss("preferences")
        prefs = await self._on_store(self._store.get_preferences(workspace_id, user_id))
        skipped = self._cache is not None and not used
        if not skipped:
            filled, _ = await self._on_cache(lambda c: c.fill_preferences(workspace_id, user_id, prefs))
            skipped = self._cache is not None and not filled
        return Preferences(prefs.values, Served(Tier.STORE, self._degraded(skipped)))

    async def set_preferences(
        self, workspace_id: str, user_id: str, values: dict[str, str]
    ) -> tuple[PreferenceChange, Served]:
        """Upsert preferences in the store, then in the cache."""
        return await self._write_preferences(
            workspace_id,
            user_id,
            lambda repair: self._store.set_preferences(workspace_id, user_id, values, repair=repair),
        )

    async def delete_preferences(
        self, workspace_id: str, user_id: str, keys: Sequence[str] | None
    ) -> tuple[PreferenceChange, Served]:
        """Delete some or all preferences in the store, then in the cache."""
        return await self._write_preferences(
            workspace_id,
            user_id,
            lambda repair: self._store.delete_preferences(workspace_id, user_id, keys, repair=repair),
        )

    async def _write_preferences(
        self, workspace_id: str, user_id: str, write: Callable[[bool], Awaitable[PreferenceChange]]
    ) -> tuple[PreferenceChange, Served]:
        cache = await self._usable_cache()
        bypassed = self._cache is not None and cache is None
        if bypassed:
            self._bypass_started()
        try:
            change = await self._on_store(write(bypassed))
        finally:
            if bypassed:
                self._bypass_ended()
        if not bypassed and self._cache is not None:
            applied, _ = await self._on_cache(lambda c: c.apply_preferences(workspace_id, user_id, change))
            if not applied:
                await self._on_store(self._store.mark_repairs([Repair("u", workspace_id, user_id)]))
                bypassed = True
        return change, Served(Tier.STORE, self._degraded(bypassed))
