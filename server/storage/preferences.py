"""Preferences over the cache and the store: always written through, since they are small and rarely written.

The store's version of a user's preferences orders the changes: the cache applies a change only on top of
the version before it, and drops its copy otherwise, so a cached copy is never older than a write it saw.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from server.storage.buckets import bucket_of
from server.storage.models import Fence, PreferenceChange, PreferenceValue, Repair, Tier
from server.storage.observer import StorageObserver
from server.storage.protocols import PreferenceStore
from server.storage.results import Preferences, Served
from server.storage.tiers import Tiers


class PreferenceRepository:
    """A user's preferences over an optional cache and the store.

    Args:
        tiers: the tiers, shared with the thread repository.
        store: the store's preferences.
        observer: receives cache hits and misses.
    """

    def __init__(self, tiers: Tiers, store: PreferenceStore, observer: StorageObserver) -> None:
        self.tiers = tiers
        self._store = store
        self._observer = observer

    async def get(self, workspace_id: str, user_id: str) -> Preferences:
        """Return a user's preferences, from the cache when it holds them."""
        bucket = bucket_of(workspace_id, user_id)
        used, cached = await self.tiers.on_cache(bucket, lambda c: c.read_preferences(workspace_id, user_id))
        if cached is not None:
            self._observer.cache_hit("preferences")
            values = {k: PreferenceValue(v, us) for k, (v, us) in cached.items()}
            return Preferences(values, Served(Tier.CACHE, self.tiers.degraded(bucket)))
        if used:
            self._observer.cache_miss("preferences")
        prefs = await self.tiers.on_store(self._store.get_preferences(workspace_id, user_id))
        skipped = self.tiers.cache is not None and not used
        if not skipped:
            filled, _ = await self.tiers.on_cache(bucket, lambda c: c.fill_preferences(workspace_id, user_id, prefs))
            skipped = self.tiers.cache is not None and not filled
        return Preferences(prefs.values, Served(Tier.STORE, self.tiers.degraded(bucket, skipped)))

    async def set(self, workspace_id: str, user_id: str, values: dict[str, str]) -> tuple[PreferenceChange, Served]:
        """Upsert preferences in the store, then in the cache."""
        return await self.tiers.fenced(
            lambda: self._write(
                workspace_id,
                user_id,
                lambda fence: self._store.set_preferences(workspace_id, user_id, values, repair=fence),
            )
        )

    async def delete(
        self, workspace_id: str, user_id: str, keys: Sequence[str] | None
    ) -> tuple[PreferenceChange, Served]:
        """Delete some or all preferences in the store, then in the cache."""
        return await self.tiers.fenced(
            lambda: self._write(
                workspace_id,
                user_id,
                lambda fence: self._store.delete_preferences(workspace_id, user_id, keys, repair=fence),
            )
        )

    async def _write(
        self, workspace_id: str, user_id: str, write: Callable[[Fence | None], Awaitable[PreferenceChange]]
    ) -> tuple[PreferenceChange, Served]:
        bucket = bucket_of(workspace_id, user_id)
        cache = await self.tiers.usable_cache(bucket)
        bypassed = self.tiers.cache is not None and cache is None
        fence = await self.tiers.fence([bucket]) if bypassed else None
        change = await self.tiers.on_store(write(fence))
        if not bypassed and self.tiers.cache is not None:
            applied, _ = await self.tiers.on_cache(bucket, lambda c: c.apply_preferences(workspace_id, user_id, change))
            if not applied:
                await self.tiers.mark([Repair("u", workspace_id, user_id)])
                bypassed = True
        return change, Served(Tier.STORE, self.tiers.degraded(bucket, bypassed))
