"""Event-loop lag: how late a periodic timer fires, the measure of a process that is behind on its CPU work."""

from __future__ import annotations

import asyncio

_INTERVAL_S = 0.025
# Each tick keeps at least this share of the previous figure: a burst of lag is remembered for a few
# ticks (so that the requests queued behind it are judged by it), then forgotten.
_DECAY = 0.5


class LoopLag:
    """A timer that measures, on every tick, how late the event loop ran it.

    On a busy or CPU-starved process every request waits about that long at each of its turns of the loop:
    it tells a process short of CPU (where refusing work helps) from one waiting on a slow store (where it
    does not).

    Args:
        interval_s: the time between ticks.
    """

    def __init__(self, interval_s: float = _INTERVAL_S) -> None:
        self._interval_s = interval_s
        self.lag_s = 0.0
        self._due = 0.0
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Start ticking on the running loop."""
        self._loop = asyncio.get_running_loop()
        self._schedule()

    def _schedule(self) -> None:
        assert self._loop is not None
        self._due = self._loop.time() + self._interval_s
        self._handle = self._loop.call_later(self._interval_s, self._tick)

    def _tick(self) -> None:
        assert self._loop is not None
        late = max(0.0, self._loop.time() - self._due)
        self.lag_s = max(late, self.lag_s * _DECAY)
        self._schedule()

    def stop(self) -> None:
        """Stop ticking."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
