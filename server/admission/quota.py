"""Per-workspace token buckets: the shared Redis side (one script on Redis's clock) and the rate type."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from server.admission import scripts
from server.storage.protocols import CacheUnavailableError
from server.storage.redis.keys import KeySpace
from server.storage.redis.scripts import Script

KINDS = ("requests", "bytes")


@dataclass(frozen=True, slots=True)
class Rate:
    """A token bucket's refill rate per second and its size."""

    per_s: float
    burst: float

    @classmethod
    def of(cls, per_s: float, burst: float, *, minimum: float = 1.0) -> Rate | None:
        """Return the rate, or None when ``per_s`` is 0 (off); a 0 burst means one second's worth."""
        if per_s <= 0:
            return None
        return cls(per_s, burst if burst > 0 else max(per_s, minimum))


@dataclass(frozen=True, slots=True)
class Refusal:
    """Which bucket refused (``requests`` or ``bytes``) and how long until the request would pass."""

    kind: str
    retry_after_s: float


class RedisQuota:
    """Token buckets shared by every replica, kept in Redis.

    Args:
        client: the redis.asyncio client.
        keys: the key space.
        requests: the request rate, or None.
        append_bytes: the appended-bytes rate, or None.
    """

    def __init__(self, client: Any, keys: KeySpace, requests: Rate | None, append_bytes: Rate | None) -> None:
        self._client = client
        self._keys = keys
        self._requests = requests
        self._bytes = append_bytes
        self._script = Script(scripts.QUOTA_TAKE)

    async def take(self, workspace_id: str, n_bytes: int) -> Refusal | None:
        """Charge one request (and ``n_bytes`` appended bytes); return the refusal, or None if admitted.

        Raises:
            CacheUnavailableError: Redis cannot answer (the caller falls back to local buckets).
        """
        args: list[float] = []
        for rate, cost in ((self._requests, 1), (self._bytes, n_bytes)):
            args += [rate.per_s, rate.burst, cost] if rate is not None else [0, 0, 0]
        try:
            which, wait_ms = await self._script(self._client, self._keys.quota(workspace_id), args)
        except Exception as exc:  # any failure of Redis falls back to the per-process limits, never INTERNAL
            raise CacheUnavailableError(f"{type(exc).__name__}: {exc}") from exc
        if int(which) == 0:
            return None
        return Refusal(KINDS[int(which) - 1], int(wait_ms) / 1000)


class StreamLeases:
    """Open StreamHistory calls per workspace, counted across replicas with leases in Redis.

    Each open stream holds a lease that this process renews (``renew``) while the stream runs, so the
    slots of a crashed replica come back after ``lease_s``.

    Args:
        client: the redis.asyncio client.
        keys: the key space.
        owner: a name unique to this process.
        lease_s: how long a lease lasts without renewal.
    """

    def __init__(self, client: Any, keys: KeySpace, *, owner: str, lease_s: float) -> None:
        self._client = client
        self._keys = keys
        self._owner = owner
        self._lease_ms = int(lease_s * 1000)
        self._acquire = Script(scripts.STREAM_ACQUIRE)
        self._renew = Script(scripts.STREAM_RENEW)
        self._ids = itertools.count()
        self.held: dict[str, set[str]] = {}

    async def acquire(self, workspace_id: str, cap: int) -> tuple[str | None, int]:
        """Take a slot; return (the lease's name, or None at the cap; the workspace's open streams).

        Raises:
            CacheUnavailableError: Redis cannot answer.
        """
        member = f"{self._owner}:{next(self._ids)}"
        admitted, count = await self._call(
            self._acquire, self._keys.streams(workspace_id), [cap, member, self._lease_ms]
        )
        if not int(admitted):
            return None, int(count)
        self.held.setdefault(workspace_id, set()).add(member)
        return member, int(count)

    async def release(self, workspace_id: str, member: str) -> None:
        """Give a slot back (if Redis cannot be reached, the lease lapses by itself)."""
        members = self.held.get(workspace_id)
        if members is not None:
            members.discard(member)
            if not members:
                del self.held[workspace_id]
        try:
            await self._client.zrem(self._keys.streams(workspace_id), member)
        except Exception as exc:  # any failure of Redis falls back to the per-process limits, never INTERNAL
            raise CacheUnavailableError(f"{type(exc).__name__}: {exc}") from exc

    async def renew(self) -> None:
        """Extend the lease of every stream this process holds open."""
        for workspace_id, members in list(self.held.items()):
            if members:
                await self._call(self._renew, self._keys.streams(workspace_id), [self._lease_ms, *members])

    async def _call(self, script: Script, key: str, args: list[Any]) -> Any:
        try:
            return await script(self._client, [key], args)
        except Exception as exc:  # any failure of Redis falls back to the per-process limits, never INTERNAL
            raise CacheUnavailableError(f"{type(exc).__name__}: {exc}") from exc
