"""The storage Protocols: one narrow Protocol per consumer of the durable store, and the cache's."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Protocol

from server.storage.apikeys import KeyStore
from server.storage.models import (
    AppendCommand,
    AppendResult,
    CompactResult,
    EncodedPage,
    EncodedTail,
    Fence,
    ForkResult,
    FramedPage,
    NewThreadOptions,
    PreferenceChange,
    PreferenceSet,
    QueuedAppend,
    QueuedReply,
    QueuedRequest,
    Repair,
    Seed,
    StoredMessage,
    ThreadCursor,
    ThreadInfo,
    ThreadKey,
    ThreadPatch,
    ThreadTail,
    Trimmed,
    TruncateResult,
    WindowRead,
)


class StoreUnavailableError(Exception):
    """The durable store could not be reached or failed for a reason outside the request."""


class CacheUnavailableError(Exception):
    """Redis could not be reached or timed out, or its client failed in any other way."""


class CacheFencedError(Exception):
    """A write around Redis was refused: another replica repaired these buckets and uses Redis for them again.

    Args:
        buckets: the buckets whose epoch moved on.
    """

    def __init__(self, buckets: Sequence[int]) -> None:
        super().__init__(f"buckets {sorted(buckets)[:8]} are in use through Redis again")
        self.buckets = list(buckets)


class MessageStore(Protocol):
    """Messages (L2): group-committed appends (the seq authority in write_through), seeds and reads."""

    async def append_batch(
        self, commands: Sequence[AppendCommand], *, repair: Fence | None = None, fallback_gap: int = 0
    ) -> list[AppendResult | Exception]:
        """Commit several appends in one transaction; a per-command domain error fails only that command.

        With ``repair`` (the epochs of the buckets whose cache was bypassed) the threads in those buckets
        are marked for repair in the same transaction, and such a thread not yet marked first skips
        ``fallback_gap`` seqs. CacheFencedError if one of those epochs moved on.
        """
        ...

    async def seed(self, key: ThreadKey, create: NewThreadOptions | None = None) -> Seed:
        """Return a thread's counters, or a fresh incarnation for an unknown thread (created if ``create``)."""
        ...

    async def tail(self, key: ThreadKey, limit: int) -> ThreadTail | None:
        """Return the newest ``limit`` messages, oldest first, or None for an unknown thread."""
        ...

    async def taken_message_ids(self, key: ThreadKey, ids: Sequence[str]) -> set[str]:
        """Return which of ``ids`` (client message ids) the thread already holds."""
        ...

    async def encoded_tail(self, key: ThreadKey, limit: int) -> EncodedTail | None:
        """Return the newest ``limit`` messages as serialised Messages, oldest first, or None for an unknown thread."""
        ...

    async def list_messages(self, key: ThreadKey, start_seq: int, reverse: bool, limit: int) -> list[StoredMessage]:
        """Return up to ``limit`` messages from ``start_seq`` (inclusive) in the given direction."""
        ...

    async def encoded_page(self, key: ThreadKey, start_seq: int, limit: int) -> EncodedPage:
        """Return up to ``limit`` messages from ``start_seq`` (inclusive, ascending) as serialised Messages."""
        ...

    async def framed_page(self, key: ThreadKey, start_seq: int, limit: int, max_bytes: int) -> FramedPage:
        """Return what encoded_page does, framed as repeated field 1 in runs of at most ``max_bytes``."""
        ...


class ThreadStore(Protocol):
    """Thread rows (L2): metadata, a user's listing, patches, and deletes that leave a tombstone."""

    async def get_thread(self, key: ThreadKey) -> ThreadInfo | None:
        """Return a thread's metadata, or None."""
        ...

    async def list_threads(
        self, workspace_id: str, user_id: str, after: ThreadCursor | None, limit: int
    ) -> list[ThreadInfo]:
        """Return a user's threads, newest first, after the cursor."""
        ...

    async def update_thread(
        self, key: ThreadKey, patch: ThreadPatch, *, repair: Fence | None = None
    ) -> ThreadInfo | None:
        """Apply the patch; return the updated thread, or None if unknown."""
        ...

    async def delete_thread(
        self,
        key: ThreadKey,
        *,
        tombstone_incarnation: int = 0,
        repair: Fence | None = None,
        idle_before_us: int | None = None,
    ) -> tuple[ThreadInfo | None, int]:
        """Delete a thread and its messages, leaving a tombstone; return (the row or None, messages deleted).

        With ``idle_before_us``, only a thread last changed before that time is deleted; otherwise
        nothing is written (no tombstone) and the row returned is None.
        """
        ...


class ReshapeStore(Protocol):
    """Whole-thread changes (L2): fork, truncate and compact, each in one transaction."""

    async def fork_thread(
        self, source: ThreadKey, target: ThreadKey, through_seq: int | None, options: NewThreadOptions
    ) -> ForkResult:
        """Create ``target`` with ``source``'s messages up to ``through_seq`` (None: all), renumbered from 1.

        A ``target`` that exists is a replay when it is a fork of ``source`` at that seq, else
        ThreadExistsError; an unknown source is ThreadNotFoundError.
        """
        ...

    async def truncate_thread(
        self,
        key: ThreadKey,
        after_seq: int,
        expected_last_seq: int | None,
        keep: int,
        *,
        repair: Fence | None = None,
    ) -> TruncateResult:
        """Delete the messages after ``after_seq``; last_seq stays, so seqs are never reused.

        NotFoundError for an unknown thread, AbortedError when ``expected_last_seq`` does not match. A
        compaction beyond ``after_seq`` is dropped with the messages its summary stood for.
        """
        ...

    async def compact_thread(
        self, key: ThreadKey, through_seq: int, summary: bytes, request_id: str, *, repair: Fence | None = None
    ) -> CompactResult:
        """Record ``summary`` (a serialised Message with seq = through_seq) as standing in for the messages up to it.

        ThreadNotFoundError for an unknown thread; CompactionRangeError when through_seq is past the last seq
        or below the current compaction. A request_id equal to the last compaction's is a replay.
        """
        ...


class PreferenceStore(Protocol):
    """A user's preferences (L2), versioned so that the cache applies changes in order."""

    async def get_preferences(self, workspace_id: str, user_id: str) -> PreferenceSet:
        """Return all of a user's preferences (version 0 and none for an unknown user)."""
        ...

    async def set_preferences(
        self, workspace_id: str, user_id: str, values: dict[str, str], *, repair: Fence | None = None
    ) -> PreferenceChange:
        """Upsert keys and bump the version."""
        ...

    async def delete_preferences(
        self, workspace_id: str, user_id: str, keys: Sequence[str] | None, *, repair: Fence | None = None
    ) -> PreferenceChange:
        """Delete the keys (None: all of them) and bump the version."""
        ...


class RepairLog(Protocol):
    """Cache entries that a write around Redis may have left stale, kept in the store."""

    async def mark_repairs(self, repairs: Sequence[Repair]) -> None:
        """Mark cache entries as possibly stale (a write went around Redis, or Redis failed mid-write)."""
        ...

    async def list_repairs(self, limit: int, buckets: Sequence[int] | None = None) -> list[Repair]:
        """Return cache entries marked as possibly stale in the buckets (None: all), oldest first."""
        ...

    async def clear_repairs(self, repairs: Sequence[Repair]) -> None:
        """Forget applied repairs (unless marked again since listed)."""
        ...

    async def epochs(self, buckets: Sequence[int] | None = None) -> Fence:
        """Return the repair epoch of each bucket (None: all): the fence for writes around Redis."""
        ...

    async def begin_recovery(self, buckets: Sequence[int] | None = None) -> Fence:
        """Bump the buckets' epochs (None: all) before their repairs are applied and Redis is used again.

        A write around Redis made under an older epoch then fails with CacheFencedError, so no replica
        numbers a thread through the store while another numbers it through Redis.
        """
        ...


class OutboxSink(Protocol):
    """Where the write_behind flusher writes outbox entries."""

    async def apply_queued(self, entries: Sequence[QueuedAppend]) -> int:
        """Write outbox entries idempotently, skipping deleted incarnations; return messages inserted."""
        ...


class RetentionStore(Protocol):
    """What the retention sweeper reads and trims."""

    async def idle_threads(self, cutoff_us: int, after: ThreadInfo | None, limit: int) -> list[ThreadInfo]:
        """Return threads last changed before ``cutoff_us``, oldest change first, after the cursor thread."""
        ...

    async def trim_messages(self, cutoff_us: int, limit: int) -> list[Trimmed]:
        """Delete up to ``limit`` messages created before ``cutoff_us`` in one short transaction.

        Lowers each thread's message count by what it lost. Returns the counts per thread.
        """
        ...

    def retention_lease(self) -> contextlib.AbstractAsyncContextManager[bool]:
        """Hold the right to sweep: yields True for one holder at a time across replicas, else False."""
        ...


class Stores(Protocol):
    """The durable tier (L2), PostgreSQL or SQLite: one part per consumer, sharing one connection pool."""

    @property
    def messages(self) -> MessageStore:
        """Messages: appends, seeds and reads."""
        ...

    @property
    def reshape(self) -> ReshapeStore:
        """Fork, truncate and compact."""
        ...

    @property
    def threads(self) -> ThreadStore:
        """Thread rows."""
        ...

    @property
    def preferences(self) -> PreferenceStore:
        """Preferences."""
        ...

    @property
    def repairs(self) -> RepairLog:
        """The cache repair log."""
        ...

    @property
    def outbox(self) -> OutboxSink:
        """The flusher's sink."""
        ...

    @property
    def retention(self) -> RetentionStore:
        """The sweeper's reads and trims."""
        ...

    @property
    def keys(self) -> KeyStore:
        """API keys."""
        ...

    async def migrate(self) -> list[str]:
        """Apply pending migrations; return the names applied."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class Cache(Protocol):
    """The L1 tier: Redis, or the embedded mode's in-process window cache (local_cache.py).

    Every method of the Redis cache raises CacheUnavailableError when Redis cannot answer; the in-process
    cache never fails. The write_behind methods (append_queued, pending_seq) belong to Redis alone.
    """

    async def close(self) -> None:
        """Release connections."""
        ...

    @property
    def in_process(self) -> bool:
        """True for a cache inside this process: nothing writes around it, so it needs no breaker, repair or outbox."""
        ...

    @property
    def sharded(self) -> bool:
        """True on Redis Cluster: each bucket may fail (and is degraded and repaired) on its own."""
        ...

    @property
    def connects(self) -> int:
        """How many connections to Redis were opened so far (a new one may follow a Redis restart)."""
        ...

    async def ping(self, bucket: int | None = None, fresh: bool = False) -> None:
        """Round-trip to Redis (on a cluster, to the bucket's master); ``fresh``: on a new connection."""
        ...

    async def read_window(self, key: ThreadKey, limit: int) -> list[bytes] | None:
        """Return the newest ``limit`` encoded messages if the window is valid, else None (a miss)."""
        ...

    async def read_window_or_pending(self, key: ThreadKey, limit: int) -> WindowRead:
        """Read the window as read_window does; on a miss, also return the thread's unflushed state."""
        ...

    async def fill_window(self, thread: ThreadInfo, encoded: Sequence[bytes], fence: int | None = None) -> bool:
        """Replace the window with a store read, unless a newer write or a delete fenced it; True if filled."""
        ...

    async def push_window(self, thread: ThreadInfo, first_seq: int, encoded: Sequence[bytes]) -> bool:
        """Extend the window after a commit if it is contiguous, else invalidate it; True if extended."""
        ...

    async def drop_thread(self, key: ThreadKey, incarnation: int) -> None:
        """Forget a deleted thread and fence out late fills and appends of that incarnation."""
        ...

    async def trim_thread(self, key: ThreadKey, incarnation: int, removed: int) -> None:
        """After retention deleted old messages of a live thread: drop its window, lower its counted length."""
        ...

    async def forget_message_ids(self, key: ThreadKey, message_ids: Sequence[str]) -> None:
        """Forget queued message ids of a thread (a truncate removed those messages, so the ids are free)."""
        ...

    async def reconcile_thread(self, key: ThreadKey, seed: Seed) -> None:
        """Drop a possibly stale window and raise the thread's counter to the store's (``seed``)."""
        ...

    async def reset_preferences(self, workspace_id: str, user_id: str) -> None:
        """Forget a user's possibly stale cached preferences."""
        ...

    async def thread_incarnation(self, key: ThreadKey) -> int | None:
        """Return the incarnation Redis holds for a live thread, or None."""
        ...

    async def pending_seq(self, key: ThreadKey) -> tuple[int, int] | None:
        """Return (newest queued seq, flushed mark) of the thread, or None when nothing is unflushed."""
        ...

    async def append_queued(self, request: QueuedRequest) -> QueuedReply:
        """Append in write_behind mode: assign seqs, extend the window and enqueue, atomically."""
        ...

    async def aof_enabled(self) -> bool | None:
        """Tell whether Redis has AOF persistence on (None: cannot tell)."""
        ...

    async def retune_window(self, thread: ThreadInfo) -> None:
        """Apply a changed TTL or pin to a cached window."""
        ...

    async def read_preferences(self, workspace_id: str, user_id: str) -> dict[str, tuple[str, int]] | None:
        """Return {key: (value, update_time_us)} if cached, else None."""
        ...

    async def fill_preferences(self, workspace_id: str, user_id: str, prefs: PreferenceSet) -> bool:
        """Cache a store read unless a newer write fenced it; True if filled."""
        ...

    async def apply_preferences(self, workspace_id: str, user_id: str, change: PreferenceChange) -> None:
        """Apply a committed change to the cached hash, or invalidate it if it is not the previous version."""
        ...
