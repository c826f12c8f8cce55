"""The watch hub: which threads are watched in this process, the newest seq known of each, and who to wake.

It is the repository's ``ThreadEvents`` listener. An append or a removal only records a number and sets
the events of that thread's watchers (O(1) memory per watcher, no queues), so a watcher that reads
slowly never holds an append back; each watcher reads what it missed from the tiers itself. A relay
(Redis pub/sub) carries the same notices to and from the other replicas.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from server.errors import QuotaExceededError, UnavailableError
from server.storage.models import ThreadKey

log = logging.getLogger(__name__)

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


class _Thread:
    __slots__ = ("newest", "removals", "watchers")

    def __init__(self) -> None:
        self.newest = 0
        self.removals = 0
        self.watchers: set[Watcher] = set()


class Watcher:
    """One open watch: an event set whenever its thread may have changed.

    Attributes:
        key: the watched thread.
    """

    __slots__ = ("_event", "_hub", "_thread", "key")

    def __init__(self, hub: WatchHub, key: ThreadKey, thread: _Thread) -> None:
        self._hub = hub
        self.key = key
        self._thread = thread
        self._event = asyncio.Event()

    @property
    def newest(self) -> int:
        """The newest seq this process knows was appended to the thread (0: none known)."""
        return self._thread.newest

    @property
    def removals(self) -> int:
        """How many removal notices the thread has had since it was first watched here."""
        return self._thread.removals

    def wake(self) -> None:
        """Make the next ``wait`` return at once."""
        self._event.set()

    def arm(self) -> None:
        """Forget past wake-ups: call before reading, so that a notice during the read wakes the next wait."""
        self._event.clear()

    async def wait(self, timeout_s: float) -> None:
        """Wait until the thread may have changed, or ``timeout_s`` passes.

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

    def appended(self, key: ThreadKey, last_seq: int) -> None:
        """Note an append acknowledged by this process, here and on the other replicas."""
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
        for watcher in thread.watchers:
            watcher.wake()

    def note_removed(self, key: ThreadKey) -> None:
        """Wake the thread's watchers to check whether it still exists."""
        thread = self._threads.get(key)
        if thread is None:
            return
        thread.removals += 1
        thread.newest = 0  # a thread deleted and created again numbers from 1 again
        for watcher in thread.watchers:
            watcher.wake()

    def wake_all(self) -> None:
        """Wake every watcher (notices may have been lost, e.g. while the relay reconnected)."""
        for thread in self._threads.values():
            for watcher in thread.watchers:
                watcher.wake()

    def close(self) -> None:
        """Refuse new watches and end the open ones with UNAVAILABLE, so their clients resume elsewhere."""
        self.closing = True
        self.wake_all()
