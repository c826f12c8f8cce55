"""What the storage layer reports for metrics (cache hits, hydrations, pool sizes), without knowing who listens."""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

CacheKind = Literal["window", "preferences"]


class StorageObserver(Protocol):
    """Receives the repository's cache events; calls must be cheap and never raise."""

    def cache_hit(self, kind: CacheKind) -> None:
        """Count a read answered by the cache."""
        ...

    def cache_miss(self, kind: CacheKind) -> None:
        """Count a read the cache was asked for and could not answer."""
        ...

    def hydration(self) -> None:
        """Count a window read from the store to fill the cache."""
        ...


class NoObserver:
    """The default observer: ignores everything."""

    def cache_hit(self, kind: CacheKind) -> None:
        """Ignore a hit."""

    def cache_miss(self, kind: CacheKind) -> None:
        """Ignore a miss."""

    def hydration(self) -> None:
        """Ignore a hydration."""


@runtime_checkable
class PoolReporter(Protocol):
    """A tier with a connection pool that can say how it is used."""

    def pool_stats(self) -> dict[str, int]:
        """Return connection counts by state (e.g. ``in_use``, ``idle``); empty when unknown."""
        ...
