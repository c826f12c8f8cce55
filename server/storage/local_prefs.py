"""Users' preferences in process memory for the embedded mode's cache, versioned as the Redis hash is (APPLY_PREFS)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from server.storage.models import PreferenceChange, PreferenceSet


@dataclass(slots=True)
class _Prefs:
    """A user's cached preferences at ``version``; None while only a fence (``fenced``) is kept."""

    version: int | None
    values: dict[str, tuple[str, int]] = field(default_factory=dict)
    fenced: int = -1
    expires: float = 0.0


class LocalPreferences:
    """A bounded LRU of users' preferences: a change applies on top of the version before it, else it fences.

    Args:
        max_users: the most users kept.
        ttl_s: the sliding TTL of a user's entry.
        clock: monotonic seconds.
    """

    def __init__(self, *, max_users: int, ttl_s: int, clock: Callable[[], float]) -> None:
        self._max = max_users
        self._ttl_s = ttl_s
        self._clock = clock
        self._users: OrderedDict[tuple[str, str], _Prefs] = OrderedDict()

    def clear(self) -> None:
        """Forget every user."""
        self._users.clear()

    def _get(self, key: tuple[str, str]) -> _Prefs | None:
        entry = self._users.get(key)
        if entry is not None and entry.expires <= self._clock():
            del self._users[key]
            return None
        return entry

    def _put(self, key: tuple[str, str], entry: _Prefs) -> None:
        entry.expires = self._clock() + self._ttl_s
        self._users[key] = entry
        self._users.move_to_end(key)
        while len(self._users) > self._max:
            self._users.popitem(last=False)

    def read(self, workspace_id: str, user_id: str) -> dict[str, tuple[str, int]] | None:
        """Return {key: (value, update_time_us)} if cached, refreshing the TTL, else None."""
        key = (workspace_id, user_id)
        entry = self._get(key)
        if entry is None or entry.version is None:
            return None
        entry.expires = self._clock() + self._ttl_s
        self._users.move_to_end(key)
        return dict(entry.values)

    def fill(self, workspace_id: str, user_id: str, prefs: PreferenceSet) -> bool:
        """Cache a store read unless a newer version (or fence) is known; True if filled."""
        key = (workspace_id, user_id)
        entry = self._get(key)
        if entry is not None and max(entry.version if entry.version is not None else -1, entry.fenced) > prefs.version:
            return False
        values = {k: (v.value, v.update_time_us) for k, v in prefs.values.items()}
        self._put(key, _Prefs(prefs.version, values))
        return True

    def apply(self, workspace_id: str, user_id: str, change: PreferenceChange) -> None:
        """Apply a committed change on top of the version before it; otherwise keep only a fence."""
        key = (workspace_id, user_id)
        entry = self._get(key)
        version = None if entry is None else entry.version
        if entry is not None and version is not None and version >= change.version:
            return
        if entry is not None and version == change.version - 1:
            if change.deleted_all:
                entry.values = {}
            for k in change.deleted_keys:
                entry.values.pop(k, None)
            for k, v in change.set_values.items():
                entry.values[k] = (v.value, v.update_time_us)
            entry.version = change.version
            self._put(key, entry)
            return
        fence = max(version or 0, entry.fenced if entry is not None else 0, change.version)
        self._put(key, _Prefs(None, fenced=fence))

    def reset(self, workspace_id: str, user_id: str) -> None:
        """Forget a user's entry."""
        self._users.pop((workspace_id, user_id), None)
