"""The consistency policy for threads: the only place that knows the order of cache, outbox and store.

Preferences follow the same rules in preferences.py; erasure and retention in erasure.py.

Write paths (MEMORY__WRITE_MODE):
- write_through: the store commits first and assigns seqs (PERSISTED); the cache window is then
  extended in commit order, or invalidated when it is not contiguous. Concurrent appends are
  group-committed (storewrite.py).
- write_behind: one script on the thread's slot checks the request id, assigns seqs from the Redis
  counter, extends the window and adds the messages to the bucket's outbox stream (QUEUED). The
  flusher (redis/outbox.py) moves them to the store.

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

Degradation: a cache that cannot answer trips a breaker (tiers.py, health.py) and requests bypass Redis, with
``degraded`` set; a store that cannot answer fails the request with UNAVAILABLE unless the cache can
serve it alone (cached windows, write_behind appends to threads Redis already counts).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from server.errors import (
    AbortedError,
    BacklogFullError,
    MessageIdExistsError,
    StoreDownError,
    ThreadNotFoundError,
    UnavailableError,
)
from server.storage.codec import encode_unsequenced, frame_repeated
from server.storage.events import NoEvents, ThreadEvents
from server.storage.health import TierHealth
from server.storage.models import (
    AppendCommand,
    Durability,
    EncodedPage,
    EncodedTail,
    FramedPage,
    QueuedRequest,
    StoredMessage,
    ThreadCursor,
    ThreadInfo,
    ThreadKey,
    ThreadPatch,
    Tier,
)
from server.storage.observer import NoObserver, StorageObserver
from server.storage.preferences import PreferenceRepository
from server.storage.protocols import Cache, Stores
from server.storage.reshape import Reshaper
from server.storage.results import AppendOutcome, QueueProbe, Served, Window
from server.storage.storewrite import StoreWriter
from server.storage.tiers import Tiers

log = logging.getLogger(__name__)

T = TypeVar("T")
_Page = TypeVar("_Page", EncodedPage, FramedPage)
_FLUSH_POLL_S = 0.01


_BACKGROUND_GRACE_S = 2.0


def _consume_quietly(task: asyncio.Future[Any]) -> None:
    # A prefetch the caller no longer wants: retrieve its outcome so that it is never logged as lost.
    if not task.cancelled():
        task.exception()


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
        call_bound_s: the longest a cache call can stay in flight (None: derived from ``silence_s``).
        silence_s: a shard of Redis unused for longer is checked against the repair log before its next use
            (REDIS__SOCKET_TIMEOUT_S: a stall shorter than that makes no replica give up on Redis).
        max_group: the most appends in one group commit.
    """

    window: int
    write_behind: bool = False
    default_ttl_s: int = 24 * 3600
    request_ttl_s: int = 24 * 3600
    max_unflushed: int = 100_000
    probe_interval_s: float = 1.0
    silence_s: float = 0.5
    call_bound_s: float | None = None
    max_group: int = 256


class Repository:
    """Threads and preferences over an optional cache and a durable store.

    Args:
        stores: the durable tier (its messages, threads, preferences and repair log are used here).
        cache: the Redis tier, or None to run without L1.
        policy: the consistency settings.
        observer: receives cache hits, misses and hydrations (for metrics).
        events: told of every acknowledged append and removal (the watch hub); settable later.
    """

    def __init__(
        self,
        stores: Stores,
        cache: Cache | None,
        policy: Policy,
        observer: StorageObserver | None = None,
        events: ThreadEvents | None = None,
    ) -> None:
        self._messages = stores.messages
        self.events: ThreadEvents = events or NoEvents()
        self._threads = stores.threads
        self._policy = policy
        self._observer = observer or NoObserver()
        self.tiers = Tiers(
            cache, stores.repairs, stores.messages, policy.probe_interval_s, policy.silence_s, policy.call_bound_s
        )
        self.preferences = PreferenceRepository(self.tiers, stores.preferences, self._observer)
        # In write_behind the store path runs only around Redis, so it always leaves the fallback gap.
        self._store_writes = StoreWriter(
            self.tiers,
            stores.messages,
            push=not self.write_behind,
            fallback_gap=policy.max_unflushed if self.write_behind else 0,
            max_group=policy.max_group,
        )
        self.reshape = Reshaper(
            self.tiers,
            stores.reshape,
            stores.threads,
            self._await_flushed,
            lambda: self.write_behind,
            lambda: self.events,
        )
        self._hydrations: dict[ThreadKey, asyncio.Future[EncodedTail | None]] = {}
        self._background: set[asyncio.Future[object]] = set()

    @property
    def window(self) -> int:
        """The cached window size."""
        return self._policy.window

    @property
    def write_behind(self) -> bool:
        """True when appends are acknowledged from the outbox (which only Redis holds)."""
        cache = self.tiers.cache
        return self._policy.write_behind and cache is not None and not cache.in_process

    @property
    def redis_health(self) -> TierHealth | None:
        """Redis's health record: down while any shard of it is bypassed (None without a cache)."""
        return self.tiers.redis_health

    @property
    def store_health(self) -> TierHealth:
        """The store tier's health record."""
        return self.tiers.store_health

    async def close(self) -> None:
        """Finish the group commit in flight and the cache fills under way, and stop probing Redis."""
        await self._store_writes.close()
        if self._background:
            await asyncio.wait(set(self._background), timeout=_BACKGROUND_GRACE_S)
            for task in set(self._background):  # the cache closes next: fills still running are abandoned
                task.cancel()
        await self.tiers.close()

    async def _await_flushed(self, key: ThreadKey, probe: QueueProbe | None = None) -> bool:
        """In write_behind, wait (within the RPC's deadline) for what was queued when the read began.

        Later appends do not extend the wait, so a thread that is written all the time can still be read.
        ``probe`` is the thread's state as a read that just missed found it, which saves asking again.

        Returns:
            False when Redis could not say what is queued (the store may then lack acknowledged appends).
        """
        if not self.write_behind:
            return True
        target = None
        while True:
            if probe is None:
                used, state = await self.tiers.on_cache(key.bucket, lambda c: c.pending_seq(key))
            else:
                used, state, probe = True, probe.pending, None
            if not used:
                return False
            if state is None:
                return True
            newest, flushed = state
            target = newest if target is None else target
            if flushed >= target:
                return True
            if self.store_health.down:
                raise StoreDownError("the durable store is unavailable; queued messages cannot be read in full")
            await asyncio.sleep(_FLUSH_POLL_S)

    # --- threads: writes -------------------------------------------------------------------------

    async def append(self, command: AppendCommand) -> AppendOutcome:
        """Append messages, by the configured write path (falling back to the store without Redis)."""
        outcome = await self.tiers.fenced(lambda: self._append(command))
        # A load that started before this write must not answer a read that starts after it.
        self._hydrations.pop(command.key, None)
        if outcome.count:
            self.events.appended(command.key, outcome.first_seq + outcome.count - 1, outcome)
        return outcome

    async def _append(self, command: AppendCommand) -> AppendOutcome:
        fence = None
        if self.write_behind:
            bucket = command.key.bucket
            for attempt in range(2):
                used, outcome = await self.tiers.on_cache(bucket, lambda c: self._append_queued(c, command))
                if used and outcome is not None:
                    return outcome
                await self.tiers.settle(bucket)
                # Redis may have come back (repaired) while the calls in flight ended: try it once more.
                if attempt or await self.tiers.usable_cache(bucket) is None:
                    break
            # The epochs as of this decision (fence() does not suspend when it knows them): a recovery
            # that ends while this append waits for its group fences it out instead of letting it through.
            fence = await self.tiers.fence([bucket])
        result, degraded = await self.tiers.on_store(self._store_writes.submit(command, fence))
        return AppendOutcome(
            result.first_seq,
            result.count,
            result.message_count,
            result.replayed,
            Durability.PERSISTED,
            Served(Tier.STORE, self.tiers.degraded(command.key.bucket, degraded)),
            tuple(m.encoded for m in result.stored if m.encoded is not None),
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
            message_ids=await self._unused_ids(command),
        )
        reply = await cache.append_queued(request)
        if reply.kind == "seed":
            if command.expected_last_seq not in (None, 0) and not await self._thread_known(key):
                raise AbortedError(f"thread {key.thread_id!r} is new, expected last seq {command.expected_last_seq}")
            seed = await self.tiers.on_store(self._messages.seed(key, create=options))
            ttl = 0 if seed.pinned else (seed.ttl_seconds or self._policy.default_ttl_s)
            if not seed.exists:
                ttl = request.new_ttl_s
            options_json = json.dumps(
                {"user_id": options.user_id, "title": options.title, "ttl_seconds": options.ttl_seconds}
            )
            reply = await cache.append_queued(
                dataclasses.replace(request, seed=seed, new_ttl_s=ttl, options_json=options_json)
            )
        if reply.kind == "taken":
            i = reply.value
            raise MessageIdExistsError(i, command.messages[i].message_id, key.thread_id)
        if reply.kind == "aborted":
            raise AbortedError(
                f"thread {key.thread_id!r} has last seq {reply.value}, expected {command.expected_last_seq}"
            )
        if reply.kind == "backlog":
            raise BacklogFullError(
                f"thread {key.thread_id!r} has {reply.value} messages waiting for the store; retry later"
            )
        if reply.kind not in ("ok", "dup"):
            raise UnavailableError(f"unexpected reply from the append script: {reply.kind}")
        replayed = reply.kind == "dup"
        return AppendOutcome(
            reply.first,
            reply.count,
            reply.message_count,
            replayed,
            Durability.QUEUED,
            Served(Tier.CACHE, self.tiers.degraded(key.bucket)),
            () if replayed else request.encoded,
            unsequenced=True,
        )

    async def _unused_ids(self, command: AppendCommand) -> tuple[str, ...]:
        """Return the messages' ids for the append script, marking those the store already holds.

        The script checks the ids of appends still queued; the store answers for flushed ones. With the
        store down the append goes on, checked against the queued ones only (write_behind's promise
        is to keep accepting writes then).
        """
        ids = tuple(m.message_id for m in command.messages)
        if not any(ids):
            return ()
        try:
            taken = await self.tiers.on_store(self._messages.taken_message_ids(command.key, [i for i in ids if i]))
        except UnavailableError:
            # Once per request would flood the log during an outage; the store's health logs the outage.
            log.debug("message ids of an append to %s were checked against queued appends only", command.key)
            return ids
        # Not refused here: a retry of an append that stored these ids is a replay, which only the
        # script can recognise, so the ids the store holds go to it as '!' (refused after that check).
        return tuple("!" if mid in taken else mid for mid in ids)

    async def _thread_known(self, key: ThreadKey) -> bool:
        seed = await self.tiers.on_store(self._messages.seed(key))
        return seed.exists

    async def update_thread(self, key: ThreadKey, patch: ThreadPatch) -> tuple[ThreadInfo, Served]:
        """Change a thread's title, TTL or pin, then retune its cached window."""
        await self._await_flushed(key)
        return await self.tiers.fenced(lambda: self._update_thread(key, patch))

    async def _update_thread(self, key: ThreadKey, patch: ThreadPatch) -> tuple[ThreadInfo, Served]:
        cache = await self.tiers.usable_cache(key.bucket)
        skipped = cache is None and self.tiers.cache is not None
        fence = await self.tiers.fence([key.bucket]) if skipped else None
        thread = await self.tiers.on_store(self._threads.update_thread(key, patch, repair=fence))
        if thread is None:
            raise ThreadNotFoundError(key.thread_id)
        if cache is not None and (patch.ttl_seconds is not None or patch.pinned is not None):
            used, _ = await self.tiers.on_cache(key.bucket, lambda c: c.retune_window(thread))
            skipped = not used
        return thread, Served(Tier.STORE, self.tiers.degraded(key.bucket, skipped))

    async def delete_thread(self, key: ThreadKey, *, idle_before_us: int | None = None) -> tuple[int, Served] | None:
        """Delete a thread from the store (with a tombstone), then from Redis, outbox marker included.

        Args:
            key: the thread.
            idle_before_us: delete it only if the store saw no change to it since then (retention).

        Returns:
            (messages deleted from the store, how it was served), or None if nothing was deleted.
        """
        deleted = await self.tiers.fenced(lambda: self._delete_thread(key, idle_before_us))
        if deleted is not None:
            self.events.removed(key)
        return deleted

    async def _delete_thread(self, key: ThreadKey, idle_before_us: int | None) -> tuple[int, Served] | None:
        used, incarnation = await self.tiers.on_cache(key.bucket, lambda c: c.thread_incarnation(key))
        bypassed = self.tiers.cache is not None and not used
        fence = await self.tiers.fence([key.bucket]) if bypassed else None
        thread, count = await self.tiers.on_store(
            self._threads.delete_thread(
                key, tombstone_incarnation=incarnation or 0, repair=fence, idle_before_us=idle_before_us
            )
        )
        if thread is None and (not incarnation or idle_before_us is not None):
            return None
        dead = max(incarnation or 0, thread.incarnation if thread else 0)
        if not bypassed:
            dropped, _ = await self.tiers.on_cache(key.bucket, lambda c: c.drop_thread(key, dead))
            if not dropped:
                await self.tiers.mark_thread(key)
                bypassed = True
        return count, Served(Tier.STORE, self.tiers.degraded(key.bucket, bypassed))

    # --- threads: reads --------------------------------------------------------------------------

    async def history(self, key: ThreadKey, limit: int) -> Window:
        """Return the newest ``limit`` messages, from the cache when its window is valid."""
        used = False
        probe: QueueProbe | None = None
        fence: int | None = None
        if limit <= self._policy.window:
            # One round trip answers a hit, or tells a miss the fence its fill must pass back and (in
            # write_behind) what is still queued for this thread.
            used, read = await self.tiers.on_cache(key.bucket, lambda c: c.read_window_or_pending(key, limit))
            framed = None if read is None else read.framed
            if read is not None and framed is None:
                fence = read.fence
                probe = QueueProbe(read.pending) if self.write_behind else None
            if framed is not None:
                self._observer.cache_hit("window")
                return Window(framed, Served(Tier.CACHE, self.tiers.degraded(key.bucket)))
            if used:
                self._observer.cache_miss("window")
        await self._await_flushed(key, probe)
        # Reading past the window from the store is the plan, not a fallback: only a window read that
        # could not use the cache is degraded.
        skipped = limit <= self._policy.window and self.tiers.cache is not None and not used
        loaded = await self._hydrate(key, max(limit, self._policy.window), fill=used, fence=fence)
        served = Served(Tier.STORE, self.tiers.degraded(key.bucket, skipped))
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
        tail = await self.tiers.on_store(self._messages.encoded_tail(key, limit))
        if tail is None:
            return None
        if fill and tail.items:
            self._observer.hydration()
            # The read answers without waiting for the fill: the fill script is fenced (a newer write, a
            # delete or a retention trim refuses it), so landing late is safe, and a read before it
            # lands hydrates again.
            window = tail.items[-self._policy.window :]
            self._in_background(self.tiers.on_cache(key.bucket, lambda c: c.fill_window(tail.thread, window, fence)))
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
        return await self.tiers.on_store(self._messages.list_messages(key, start_seq, reverse, limit))

    async def stream(self, key: ThreadKey, after_seq: int, chunk: int) -> AsyncIterator[list[bytes]]:
        """Yield the history after ``after_seq`` as serialised Messages, in keyset pages of ``chunk``.

        The next page loads while the caller sends this one, so the store's latency overlaps the
        network's; memory stays two pages.
        """
        await self._await_flushed(key)
        pages = self._prefetched(after_seq, chunk, lambda start: self._messages.encoded_page(key, start, chunk))
        async for page in pages:
            yield page.items

    async def stream_framed(self, key: ThreadKey, after_seq: int, chunk: int, max_bytes: int) -> AsyncIterator[bytes]:
        """Yield the history after ``after_seq`` framed as repeated field 1, each run ready to send as one response.

        A run holds at most ``chunk`` messages and ``max_bytes`` (a bigger message alone). As ``stream``:
        the next page loads while this one is sent, and memory stays two pages.
        """
        await self._await_flushed(key)
        pages = self._prefetched(
            after_seq, chunk, lambda start: self._messages.framed_page(key, start, chunk, max_bytes)
        )
        async for page in pages:
            for run in page.runs:
                yield run

    async def _prefetched(
        self, after_seq: int, chunk: int, read: Callable[[int], Awaitable[_Page]]
    ) -> AsyncIterator[_Page]:
        """Yield the keyset pages ``read(start)`` returns from ``after_seq + 1``, loading each next one early."""

        def load(start: int) -> asyncio.Future[_Page]:
            return asyncio.ensure_future(self.tiers.on_store(read(start)))

        pending = load(after_seq + 1)
        try:
            while True:
                page = await pending
                count = len(page.items) if isinstance(page, EncodedPage) else page.count
                if count < chunk:
                    if count:
                        yield page
                    return
                pending = load(page.last_seq + 1)
                yield page
        finally:
            if not pending.done():
                pending.cancel()
            pending.add_done_callback(_consume_quietly)  # a prefetch nobody awaits: take its outcome

    async def get_thread(self, key: ThreadKey) -> ThreadInfo:
        """Return a thread's metadata or raise ThreadNotFoundError."""
        await self._await_flushed(key)
        thread = await self.tiers.on_store(self._threads.get_thread(key))
        if thread is None:
            raise ThreadNotFoundError(key.thread_id)
        return thread

    async def list_threads(
        self, workspace_id: str, user_id: str, after: ThreadCursor | None, limit: int
    ) -> list[ThreadInfo]:
        """Return a page of a user's threads, newest first (threads still only queued appear once flushed)."""
        return await self.tiers.on_store(self._threads.list_threads(workspace_id, user_id, after, limit))

    def served_by_store(self, key: ThreadKey | None = None) -> Served:
        """How a store-only read is reported: degraded while its tier (no key: any tier) is down."""
        return Served(Tier.STORE, self.tiers.degraded(None if key is None else key.bucket))
