"""In-process token buckets: the quota fallback when Redis is down or not configured (per process, not shared)."""

from __future__ import annotations

import time
from collections.abc import Callable

from server.admission.quota import KINDS, Rate, Refusal

# Past this many workspaces the buckets that have refilled completely are dropped (an absent bucket is
# full, so nothing changes); it bounds memory when many workspaces come and go. The next prune waits
# until the table has doubled, so pruning costs O(1) per request on average.
_PRUNE_AT = 10_000
# A hard bound: past it the oldest buckets are dropped even if not full (they start full again).
_MAX_BUCKETS = 100_000


class LocalQuota:
    """The same buckets as the Redis script, on this process's monotonic clock.

    Args:
        requests: the request rate, or None.
        append_bytes: the appended-bytes rate, or None.
        clock: seconds, monotonic (tests pass their own).
    """

    def __init__(
        self, requests: Rate | None, append_bytes: Rate | None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rates = (requests, append_bytes)
        self._clock = clock
        # (workspace, bucket index) -> (tokens, last update)
        self._buckets: dict[tuple[str, int], tuple[float, float]] = {}
        self._prune_at = _PRUNE_AT

    def take(self, workspace_id: str, n_bytes: int) -> Refusal | None:
        """Charge one request (and ``n_bytes``); return the refusal, or None if admitted."""
        now = self._clock()
        charged: list[tuple[tuple[str, int], float]] = []
        worst: Refusal | None = None
        for i, cost in enumerate((1, n_bytes)):
            rate = self._rates[i]
            if rate is None or cost <= 0:
                continue
            key = (workspace_id, i)
            tokens, ts = self._buckets.get(key, (rate.burst, now))
            tokens = min(rate.burst, tokens + max(0.0, now - ts) * rate.per_s)
            need = min(cost, rate.burst)
            if tokens < need:
                wait = (need - tokens) / rate.per_s
                if worst is None or wait > worst.retry_after_s:
                    worst = Refusal(KINDS[i], wait)
            charged.append((key, tokens - cost))
        if worst is not None:
            return worst
        for key, left in charged:
            self._buckets[key] = (left, now)
        if len(self._buckets) > self._prune_at:
            self._prune(now)
            self._prune_at = min(max(_PRUNE_AT, 2 * len(self._buckets)), _MAX_BUCKETS)
        return None

    def _prune(self, now: float) -> None:
        for key, (tokens, ts) in list(self._buckets.items()):
            rate = self._rates[key[1]]
            if rate is None or tokens + (now - ts) * rate.per_s >= rate.burst:
                del self._buckets[key]
        if len(self._buckets) > _MAX_BUCKETS:  # down to 90%, so the next prune is 10% of the bound away
            for key in list(self._buckets)[: len(self._buckets) - _MAX_BUCKETS * 9 // 10]:
                del self._buckets[key]
