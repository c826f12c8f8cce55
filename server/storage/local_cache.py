"""The embedded mode's L1: an exact in-process cache of thread windows (and preferences), bounded by an LRU.

With SQLite and no Redis one process owns the store, and every change to a thread goes through this
process's repository, which tells the cache in commit order (the same calls it makes on Redis: push after
a group commit, drop after a delete, trim after a truncate, compaction or retention trim). So the cache
can hold each thread's window exactly, as the serialised Messages framed like the Redis list's items, and
answer GetHistory, budgeted reads and GetContext without a store read.

The rules are the Redis scripts' (redis/scripts.py), so that the repository's logic is shared:
- a window is served only while valid: a push that is not contiguous, a trim or a drop invalidates it, and
  only a fill from the store or a push that creates the thread (seq 1) makes it valid again;
- a fill is fenced: a miss records the thread's change stamp, and a fill whose stamp moved on (any push,
  trim or drop since the read began), or whose thread entry was evicted meanwhile, is refused;
- a deleted incarnation leaves a tombstone that refuses its late fills and pushes;
- windows slide their TTL (MEMORY__THREAD_TTL_HOURS, the thread's own, or none when pinned) as in Redis.
Memory is bounded by ``max_threads`` entries (windows, tombstones and the stamps of misses in flight),
least recently used first out; an evicted thread is read from the store and cached again.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from server.storage.codec import frame_item
from server.storage.file_claim import FileClaim
from server.storage.local_prefs import LocalPreferences
from server.storage.models import (
    PreferenceChange,
    PreferenceSet,
    QueuedReply,
    QueuedRequest,
    Seed,
    ThreadInfo,
    ThreadKey,
    WindowRead,
)


@dataclass(slots=True)
class _Entry:
    """One thread's state. ``last`` is the newest item's seq while ``items`` is a valid window, else None."""

    incarnation: int
    stamp: int
    items: list[bytes] = field(default_factory=list)
    last: int | None = None
    high: int = 0  # the highest seq known committed
    full: bool = False  # items hold the thread's whole window view from its start
    ttl_s: int = 0
    expires: float = math.inf
    deleted: bool = False


class LocalCache:
    """The Cache Protocol in process memory, for one process that owns an embedded store.

    Args:
        window: how many newest messages a thread window keeps (MEMORY__MAX_THREAD_MESSAGES).
        max_threads: the most threads kept (LRU); also the most users whose preferences are kept.
        thread_ttl_s: default sliding TTL of a window.
        prefs_ttl_s: sliding TTL of a user's cached preferences.
        clock: monotonic seconds (tests pass their own).
        claim: the exclusive claim on the SQLite file, released by ``close`` (None: the caller holds it).
    """

    def __init__(
        self,
        *,
        window: int,
        max_threads: int,
        thread_ttl_s: int,
        prefs_ttl_s: int,
        clock: Callable[[], float] = time.monotonic,
        claim: FileClaim | None = None,
    ) -> None:
        if max_threads < 1:
            raise ValueError("max_threads must be at least 1")
        self._claim = claim
        self._window = window
        self._max = max_threads
        self._thread_ttl_s = thread_ttl_s
        self._clock = clock
        self._threads: OrderedDict[ThreadKey, _Entry] = OrderedDict()
        self._stamps = 0
        self.evictions = 0
        self._prefs = LocalPreferences(max_users=max_threads, ttl_s=prefs_ttl_s, clock=clock)

    # --- what the tiers ask of every cache -------------------------------------------------------

    @property
    def in_process(self) -> bool:
        """True: this cache lives in the one process that writes the store."""
        return True

    @property
    def sharded(self) -> bool:
        """False: one cache, never partly down."""
        return False

    @property
    def connects(self) -> int:
        """0: there is no connection."""
        return 0

    @property
    def window(self) -> int:
        """The number of newest messages a cached window holds."""
        return self._window

    def __len__(self) -> int:
        return len(self._threads)

    def __contains__(self, key: object) -> bool:
        entry = self._threads.get(key) if isinstance(key, ThreadKey) else None
        return entry is not None and entry.last is not None and not entry.deleted

    async def ping(self, bucket: int | None = None, fresh: bool = False) -> None:
        """Nothing to reach."""

    async def close(self) -> None:
        """Forget everything and give up the file."""
        self._threads.clear()
        self._prefs.clear()
        if self._claim is not None:
            self._claim.release()

    async def aof_enabled(self) -> bool | None:
        """None: there is no Redis persistence to speak of."""
        return None

    # --- windows ---------------------------------------------------------------------------------

    def _stamp(self) -> int:
        self._stamps += 1
        return self._stamps

    def _ttl(self, thread: ThreadInfo) -> int:
        if thread.pinned:
            return 0
        return thread.ttl_seconds or self._thread_ttl_s

    def _expiry(self, ttl_s: int) -> float:
        return self._clock() + ttl_s if ttl_s > 0 else math.inf

    def _put(self, key: ThreadKey, entry: _Entry) -> _Entry:
        self._threads[key] = entry
        self._threads.move_to_end(key)
        while len(self._threads) > self._max:
            self._threads.popitem(last=False)
            self.evictions += 1
        return entry

    def _live(self, key: ThreadKey, now: float | None = None) -> _Entry | None:
        """Return the thread's entry, dropping it first if its window's TTL ran out (as a Redis key would)."""
        entry = self._threads.get(key)
        if entry is not None and entry.expires <= (self._clock() if now is None else now):
            del self._threads[key]
            return None
        return entry

    def _hit(self, key: ThreadKey, limit: int) -> list[bytes] | None:
        now = self._clock()
        entry = self._live(key, now)
        if entry is None or entry.last is None or entry.deleted:
            return None
        items = entry.items
        n = len(items)
        if n == 0 or (n < limit and entry.last > n and not entry.full):
            return None
        self._threads.move_to_end(key)
        if entry.ttl_s > 0:
            entry.expires = now + entry.ttl_s
        # A copy: the caller joins it after this returns, and a later push changes the list in place.
        return items[-limit:] if limit < n else list(items)

    async def read_window(self, key: ThreadKey, limit: int) -> list[bytes] | None:
        """Return the newest ``limit`` messages (framed items) of a valid window, refreshing its TTL, or None."""
        return self._hit(key, limit)

    async def read_window_or_pending(self, key: ThreadKey, limit: int) -> WindowRead:
        """Read the window; on a miss, return the stamp that the fill after the store read must find unchanged."""
        items = self._hit(key, limit)
        if items is not None:
            return WindowRead(b"".join(items))
        entry = self._threads.get(key)
        if entry is None:
            # A stamp to fence the fill: any change to the thread before the fill lands moves it on.
            entry = self._put(key, _Entry(incarnation=0, stamp=self._stamp()))
        else:
            self._threads.move_to_end(key)
        return WindowRead(None, None, entry.stamp)

    async def fill_window(self, thread: ThreadInfo, encoded: Sequence[bytes], fence: int | None = None) -> bool:
        """Replace the window with a store read unless the thread changed since the miss; True if it landed."""
        key = ThreadKey(thread.workspace_id, thread.thread_id)
        entry = self._threads.get(key)
        if fence is not None and (entry is None or entry.stamp != fence):
            return False
        if entry is not None:
            if entry.incarnation > thread.incarnation:
                return False
            if entry.incarnation == thread.incarnation and (entry.deleted or entry.high > thread.last_seq):
                return False
        if not encoded:
            return False
        ttl = self._ttl(thread)
        items = [frame_item(e) for e in encoded[-self._window :]]
        self._put(
            key,
            _Entry(
                incarnation=thread.incarnation,
                stamp=self._stamp(),
                items=items,
                last=thread.last_seq,
                high=thread.last_seq,
                full=len(encoded) < self._window,
                ttl_s=ttl,
                expires=self._expiry(ttl),
            ),
        )
        return True

    async def push_window(self, thread: ThreadInfo, first_seq: int, encoded: Sequence[bytes]) -> bool:
        """Extend the window after a commit if it is contiguous, else invalidate it; True if extended.

        A thread with no entry gets one only when this commit created it (its first seq is 1): any other
        window would be partial, and a miss in flight for it holds an entry whose stamp fences its fill.
        """
        key = ThreadKey(thread.workspace_id, thread.thread_id)
        inc = thread.incarnation
        last = first_seq + len(encoded) - 1
        ttl = self._ttl(thread)
        entry = self._live(key)
        if entry is not None and (entry.incarnation > inc or (entry.incarnation == inc and entry.deleted)):
            return False
        if entry is not None and entry.incarnation == inc:
            entry.high = max(entry.high, last)
            extend = entry.last is not None and entry.last == first_seq - 1
        elif first_seq == 1:
            entry = _Entry(incarnation=inc, stamp=0, high=last)
            extend = True
        elif entry is None:
            return False
        else:
            entry = _Entry(incarnation=inc, stamp=0, high=last)
            extend = False
        entry.stamp = self._stamp()
        entry.ttl_s = ttl
        entry.expires = self._expiry(ttl)
        if extend:
            entry.items.extend(frame_item(e) for e in encoded[-self._window :])
            over = len(entry.items) - self._window
            if over > 0:
                del entry.items[:over]
                entry.full = False
            entry.last = last
        else:
            entry.items = []
            entry.last = None
            entry.full = False
        self._put(key, entry)
        return extend

    async def drop_thread(self, key: ThreadKey, incarnation: int) -> None:
        """Forget a deleted thread and leave a tombstone that refuses that incarnation's late fills and pushes."""
        entry = self._threads.get(key)
        if entry is not None and entry.incarnation > incarnation:
            return
        self._put(key, _Entry(incarnation=incarnation, stamp=self._stamp(), deleted=True))

    async def trim_thread(self, key: ThreadKey, incarnation: int, removed: int) -> None:
        """After messages of a live thread were removed (truncate, compaction, retention): drop its window."""
        entry = self._threads.get(key)
        if entry is not None:
            entry.items = []
            entry.last = None
            entry.full = False
            entry.stamp = self._stamp()

    async def forget_message_ids(self, key: ThreadKey, message_ids: Sequence[str]) -> None:
        """Nothing: this cache keeps no message ids (the store checks them in write_through)."""

    async def reconcile_thread(self, key: ThreadKey, seed: Seed) -> None:
        """Drop a possibly stale window (never needed here: nothing writes around this cache)."""
        await self.trim_thread(key, seed.incarnation, 0)

    async def thread_incarnation(self, key: ThreadKey) -> int | None:
        """None: this cache holds no thread that the store does not (no queued appends)."""
        return None

    async def pending_seq(self, key: ThreadKey) -> tuple[int, int] | None:
        """None: nothing is ever queued here."""
        return None

    async def append_queued(self, request: QueuedRequest) -> QueuedReply:
        """Refused: write_behind needs Redis (the repository never asks an in-process cache)."""
        raise RuntimeError("write_behind needs Redis: the in-process cache queues nothing")

    async def retune_window(self, thread: ThreadInfo) -> None:
        """Apply a changed TTL or pin to a cached window."""
        key = ThreadKey(thread.workspace_id, thread.thread_id)
        entry = self._live(key)
        if entry is None or entry.incarnation != thread.incarnation or entry.deleted:
            return
        entry.ttl_s = self._ttl(thread)
        entry.expires = self._expiry(entry.ttl_s)

    # --- preferences -----------------------------------------------------------------------------

    async def read_preferences(self, workspace_id: str, user_id: str) -> dict[str, tuple[str, int]] | None:
        """Return {key: (value, update_time_us)} if cached, else None."""
        return self._prefs.read(workspace_id, user_id)

    async def fill_preferences(self, workspace_id: str, user_id: str, prefs: PreferenceSet) -> bool:
        """Cache a store read unless a newer write fenced it; True if filled."""
        return self._prefs.fill(workspace_id, user_id, prefs)

    async def apply_preferences(self, workspace_id: str, user_id: str, change: PreferenceChange) -> None:
        """Apply a committed change on top of the version before it, else drop the cached copy."""
        self._prefs.apply(workspace_id, user_id, change)

    async def reset_preferences(self, workspace_id: str, user_id: str) -> None:
        """Forget a user's cached preferences."""
        self._prefs.reset(workspace_id, user_id)
