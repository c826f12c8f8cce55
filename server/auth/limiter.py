"""The failed-attempt limiter: after N failed authentications from one address in a window, refuse it until then.

The table is bounded: past ``max_peers`` addresses, the least recently failing one is forgotten.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from urllib.parse import unquote


class FailureLimiter:
    """Count failures per peer address in fixed windows that start at the first failure.

    Args:
        max_failures: failures allowed in one window; the next attempt is refused.
        window_s: the window's length.
        max_peers: most addresses tracked.
        clock: monotonic seconds (tests pass a fake).
    """

    def __init__(
        self, max_failures: int, window_s: float, max_peers: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._max = max_failures
        self._window = window_s
        self._max_peers = max_peers
        self._clock = clock
        self._table: OrderedDict[str, tuple[float, int]] = OrderedDict()  # peer -> (window start, failures)

    def __len__(self) -> int:
        return len(self._table)

    def retry_after(self, peer: str) -> float:
        """Return how long ``peer`` must wait before it may try again (0: it may try now)."""
        entry = self._table.get(peer)
        if entry is None:
            return 0.0
        start, failures = entry
        left = start + self._window - self._clock()
        if left <= 0:
            del self._table[peer]
            return 0.0
        return left if failures >= self._max else 0.0

    def failed(self, peer: str) -> None:
        """Record a failed attempt from ``peer``."""
        now = self._clock()
        entry = self._table.pop(peer, None)
        if entry is None or now - entry[0] >= self._window:
            entry = (now, 0)
        self._table[peer] = (entry[0], entry[1] + 1)
        while len(self._table) > self._max_peers:
            self._table.popitem(last=False)


def peer_host(peer: str) -> str:
    """Return the address part of a gRPC peer string (``ipv4:1.2.3.4:5``, ``ipv6:[::1]:5``, ``unix:/p``)."""
    kind, _, rest = unquote(peer).partition(":")  # gRPC percent-encodes the brackets of IPv6 peers
    if kind in ("ipv4", "ipv6"):
        host = rest.rsplit(":", 1)[0]
        return host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return unquote(peer)
