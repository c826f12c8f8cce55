"""The watch hub: which threads are watched in this process, the newest seq known of each, and who to wake.

It is the repository's ``ThreadEvents`` listener. An append or a removal only records a number and sets
the events of that thread's watchers (O(1) memory per watcher, no queues), so a watcher that reads
slowly never holds an append back; each watcher reads what it missed from the tiers itself. A relay
(Redis pub/sub) carries the same notices to and from the other replicas.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from server.errors import QuotaExceededError, UnavailableError
from server.storage.models import ThreadKey
from server.storage.results import AppendOutcome, Served

log = logging.getLogger(__name__)

T = TypeVar("T")

WATCH_RETRY_S = 1.0


class Relay(Protocol):
    """Carries append and removal notices between replicas."""

    @property
    def live(self) -> bool:
        """True while notices from the other replicas arrive (the subscription is up)."""
        ...

    def publish_appended(self, key: ThreadKey, last_seq: int) -> None:
        """Tell the other replicas of an append; must not block."""
        ...

    def publish_removed(self, key: ThreadKey) -> None:
        """Tell the other replicas of a removal; must not block."""
        ...


class _Read(Generic[T]):
    """A read of the thread shared by its watchers: it reflects every notice counted before it began."""

    __slots__ = ("future", "limit", "notices")

    def __init__(self, notices: int, limit: int, future: asyncio.Future[T]) -> None:
        self.notices = notices
        self.limit = limit
        self.future = future


def _retrieve(future: asyncio.Future[Any]) -> None:
    # A shared read whose watchers all left: take its outcome so that asyncio does not log it as lost.
    if not future.cancelled():
        future.exception()


class _Thread:
    __slots__ = ("newest", "notices", "read", "removals", "tail", "watchers")

    def __init__(self) -> None:
        self.newest = 0
        self.removals = 0
        # The newest local append's messages as stored, ending at ``newest``, and how it was served: a
        # watcher that has everything before them sends these bytes without reading the tiers again.
        self.tail: Tail | None = None
        self.notices = 0  # counts every wake-up, so that a watcher knows which shared reads are new enough
        self.read: _Read[Any] | None = None
        self.watchers: set[Watcher] = set()

    def wake(self) -> None:
        self.notices += 1
        for watcher in self.watchers:
            watcher.wake()


@dataclass(frozen=True, slots=True)
class Tail:
    """A local append's stored messages: their first seq, their bytes, and how the append was served."""

    first_seq: int
    items: tuple[bytes, ...]
    served: Served


class Watcher:
    """One open watch: an event set whenever its thread may have changed.

    Attributes:
        key: the watched thread.
    """

    __slots__ = ("_armed_at", "_event", "_hub", "_thread", "key")

    def __init__(self, hub: WatchHub, key: ThreadKey, thread: _Thread) -> None:
        self._hub = hub
        self.key = key
        self._thread = thread
        self._event = asyncio.Event()
        self._armed_at = 0

    @property
    def newest(self) -> int:
        """The newest seq this process knows was appended to the thread (0: none known)."""
        return self._thread.newest

    @property
    def tail(self) -> Tail | None:
        """The newest local append's messages, when they end at ``newest`` (else None)."""
        tail = self._thread.tail
        if tail is None or tail.first_seq + len(tail.items) - 1 != self._thread.newest:
            return None
        return tail

    @property
    def removals(self) -> int:
        """How many removal notices the thread has had since it was first watched here."""
        return self._thread.removals

    def wake(self) -> None:
        """Make the next ``wait`` return at once."""
        self._event.set()

    def arm(self, *, fresh: bool) -> None:
        """Forget past wake-ups: call before reading, so that a notice during the read wakes the next wait.

        Args:
            fresh: the next read must begin after this call (a poll, or the first read), rather than share
                any read that began after the last notice.
        """
        self._event.clear()
        if fresh:
            self._thread.notices += 1
        self._armed_at = self._thread.notices

    async def read(self, limit: int, load: Callable[[], Awaitable[T]]) -> tuple[T, int]:
        """Return (a read of at least ``limit`` items that began after this watcher's ``arm``, its limit).

        The watchers of one thread woken by one append share one read (a fan-out of N costs one read, not N).
        """
        thread = self._thread
        if len(thread.watchers) == 1:
            return await load(), limit  # nobody to share with: no task, no shield
        shared = thread.read
        if shared is None or shared.notices < self._armed_at or shared.limit < limit:
            shared = _Read(thread.notices, limit, asyncio.ensure_future(load()))
            shared.future.add_done_callback(_retrieve)
            if thread.read is None or thread.read.notices <= shared.notices:
                thread.read = shared
        return await asyncio.shield(shared.future), shared.limit

    async def wait(self, timeout_s: float) -> bool:
        """Wait until the thread may have changed, or ``timeout_s`` passes; return True if woken by a notice.

        Raises:
            UnavailableError: the server is shutting down (the client resumes on another replica).
        """
        if not self._event.is_set():
            try:
                async with asyncio.timeout(timeout_s):
                    await self._event.wait()
            except TimeoutError:
                pass
        if self._hub.closing:
            raise UnavailableError("the server is shutting down; resume the watch", retry_after_s=0.2)
        return self._event.is_set()

    def close(self) -> None:
        """End the watch and free its slot."""
        self._hub.release(self)


class WatchHub:
    """The watchers of this process, woken by local appends and by the relay.

    Args:
        max_per_workspace: the most open watches per workspace in this process (0: no cap).
        poll_s: how often a watcher reads the store when notices from other replicas cannot arrive.
        recheck_s: how often a watcher reads anyway while notices do arrive (a lost notice costs at most this).
        shared_store: other processes may write the store (PostgreSQL); False for embedded SQLite.
    """

    def __init__(self, *, max_per_workspace: int, poll_s: float, recheck_s: float, shared_store: bool) -> None:
        self.max_per_workspace = max_per_workspace
        self.poll_s = poll_s
        self.recheck_s = recheck_s
        self.shared_store = shared_store
        self.relay: Relay | None = None
        self.closing = False
        self._threads: dict[ThreadKey, _Thread] = {}
        self._per_workspace: dict[str, int] = {}

    # --- watchers ---------------------------------------------------------------------------------

    def open(self, key: ThreadKey) -> Watcher:
        """Open a watch on a thread.

        Raises:
            QuotaExceededError: the workspace has ``max_per_workspace`` watches open in this process.
            UnavailableError: the server is shutting down.
        """
        if self.closing:
            raise UnavailableError("the server is shutting down", retry_after_s=0.2)
        ws = key.workspace_id
        count = self._per_workspace.get(ws, 0)
        if self.max_per_workspace and count >= self.max_per_workspace:
            raise QuotaExceededError(f"workspace {ws} has {count} watches open (the limit)", WATCH_RETRY_S)
        self._per_workspace[ws] = count + 1
        thread = self._threads.get(key)
        if thread is None:
            thread = self._threads[key] = _Thread()
        watcher = Watcher(self, key, thread)
        thread.watchers.add(watcher)
        return watcher

    def release(self, watcher: Watcher) -> None:
        """Forget a watcher (idempotent)."""
        thread = self._threads.get(watcher.key)
        if thread is None or watcher not in thread.watchers:
            return
        thread.watchers.discard(watcher)
        if not thread.watchers:
            del self._threads[watcher.key]
            if thread.read is not None and not thread.read.future.done():
                thread.read.future.cancel()
        ws = watcher.key.workspace_id
        left = self._per_workspace[ws] - 1
        if left:
            self._per_workspace[ws] = left
        else:
            del self._per_workspace[ws]

    @property
    def watchers(self) -> int:
        """Open watches in this process."""
        return sum(self._per_workspace.values())

    def interval(self) -> tuple[float, bool]:
        """Return (how long a watcher may wait without reading, whether it is degraded)."""
        if self.relay is not None:
            return (self.recheck_s, False) if self.relay.live else (self.poll_s, True)
        # No Redis configured: polling a shared store is the design then, not a degradation.
        return (self.poll_s, False) if self.shared_store else (self.recheck_s, False)

    # --- notices (ThreadEvents, and the relay's) --------------------------------------------------

    def appended(self, key: ThreadKey, last_seq: int, outcome: AppendOutcome | None = None) -> None:
        """Note an append acknowledged by this process, here and on the other replicas."""
        thread = self._threads.get(key)
        if thread is not None and outcome is not None and outcome.encoded and last_seq > thread.newest:
            # Only a watched thread's append builds the stored form (write_behind adds each seq).
            thread.tail = Tail(outcome.first_seq, outcome.stored_items(), outcome.served)
        self.note_appended(key, last_seq)
        if self.relay is not None:
            self.relay.publish_appended(key, last_seq)

    def removed(self, key: ThreadKey) -> None:
        """Note a deletion or truncation made by this process, here and on the other replicas."""
        self.note_removed(key)
        if self.relay is not None:
            self.relay.publish_removed(key)

    def note_appended(self, key: ThreadKey, last_seq: int) -> None:
        """Wake the thread's watchers if ``last_seq`` is news."""
        thread = self._threads.get(key)
        if thread is None or last_seq <= thread.newest:
            return
        thread.newest = last_seq
        thread.wake()

    def note_removed(self, key: ThreadKey) -> None:
        """Wake the thread's watchers to check whether it still exists."""
        thread = self._threads.get(key)
        if thread is None:
            return
        thread.removals += 1
        thread.newest = 0  # a thread deleted and created again numbers from 1 again
        thread.tail = None
        thread.wake()

    def wake_all(self) -> None:
        """Wake every watcher (notices may have been lost, e.g. while the relay reconnected)."""
        for thread in self._threads.values():
            thread.wake()

    def close(self) -> None:
        """Refuse new watches and end the open ones with UNAVAILABLE, so their clients resume elsewhere."""
        self.closing = True
        self.wake_all()
