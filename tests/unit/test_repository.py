"""The consistency policy with an in-memory fake of our Cache Protocol that is down (and a real in-memory SQLite store)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest

from chatmem.v1.thread_memory_service_pb2 import GetHistoryResponse
from server.errors import UnavailableError
from server.storage.health import TierHealth
from server.storage.models import (
    AppendCommand,
    NewMessage,
    PreferenceChange,
    PreferenceSet,
    QueuedReply,
    QueuedRequest,
    Role,
    Seed,
    ThreadInfo,
    ThreadKey,
    Tier,
    WindowRead,
)
from server.storage.protocols import CacheUnavailableError
from server.storage.repository import Policy, Repository
from server.storage.sql.sqlite.store import SqliteStore

KEY = ThreadKey("w", "t")


class DownCache:
    """A Cache whose every call fails as a dead Redis would."""

    calls = 0  # the requests' own calls
    pings = 0  # the breaker's: the check before first use, then its probes

    async def _down(self) -> None:
        self.calls += 1
        raise CacheUnavailableError("connection refused")

    async def close(self) -> None:
        return None

    in_process = False
    sharded = False
    connects = 0

    async def ping(self, bucket: int | None = None, fresh: bool = False) -> None:
        self.pings += 1
        raise CacheUnavailableError("connection refused")

    async def read_window(self, key: ThreadKey, limit: int) -> list[bytes] | None:
        await self._down()
        return None

    async def read_window_or_pending(self, key: ThreadKey, limit: int) -> WindowRead:
        await self._down()
        return WindowRead(None)

    async def fill_window(self, thread: ThreadInfo, encoded: Sequence[bytes], fence: int | None = None) -> bool:
        await self._down()
        return False

    async def push_window(self, thread: ThreadInfo, first_seq: int, encoded: Sequence[bytes]) -> bool:
        await self._down()
        return False

    async def drop_thread(self, key: ThreadKey, incarnation: int) -> None:
        await self._down()

    async def trim_thread(self, key: ThreadKey, incarnation: int, removed: int) -> None:
        await self._down()

    async def reconcile_thread(self, key: ThreadKey, seed: Seed) -> None:
        await self._down()

    async def reset_preferences(self, workspace_id: str, user_id: str) -> None:
        await self._down()

    async def thread_incarnation(self, key: ThreadKey) -> int | None:
        await self._down()
        return None

    async def pending_seq(self, key: ThreadKey) -> tuple[int, int] | None:
        await self._down()
        return None

    async def append_queued(self, request: QueuedRequest) -> QueuedReply:
        await self._down()
        raise AssertionError("unreachable")

    async def aof_enabled(self) -> bool | None:
        return None

    async def retune_window(self, thread: ThreadInfo) -> None:
        await self._down()

    async def read_preferences(self, workspace_id: str, user_id: str) -> dict[str, tuple[str, int]] | None:
        await self._down()
        return None

    async def fill_preferences(self, workspace_id: str, user_id: str, prefs: PreferenceSet) -> bool:
        await self._down()
        return False

    async def apply_preferences(self, workspace_id: str, user_id: str, change: PreferenceChange) -> None:
        await self._down()


@pytest.fixture
async def store() -> AsyncIterator[SqliteStore]:
    s = SqliteStore(":memory:")
    await s.migrate()
    yield s
    await s.close()


def append(n: int) -> AppendCommand:
    return AppendCommand(KEY, tuple(NewMessage(Role.USER, f"m{i}") for i in range(n)))


async def test_a_dead_cache_degrades_to_the_store_and_says_so(store: SqliteStore) -> None:
    cache = DownCache()
    repo = Repository(store, cache, Policy(window=5))
    out = await repo.append(append(7))
    assert out.seqs == list(range(1, 8)) and out.served.degraded
    window = await repo.history(KEY, 5)
    assert window.served.tier == Tier.STORE and window.served.degraded
    assert [m.seq for m in GetHistoryResponse.FromString(window.framed).messages] == [3, 4, 5, 6, 7]
    prefs = await repo.preferences.get("w", "u")
    assert prefs.served.degraded
    _, served = await repo.preferences.set("w", "u", {"a": "1"})
    assert served.degraded
    # The breaker: the first failure (the check before first use) opens it and the requests bypass Redis
    # without waiting on it; only its probes try Redis, the first at once, then one per interval.
    assert cache.calls == 0
    assert 1 <= cache.pings <= 2
    await repo.close()


async def test_without_a_cache_everything_is_the_store_and_not_degraded(store: SqliteStore) -> None:
    repo = Repository(store, None, Policy(window=5))
    await repo.append(append(3))
    window = await repo.history(KEY, 50)
    assert window.served.tier == Tier.STORE and not window.served.degraded
    assert [m.seq for m in GetHistoryResponse.FromString(window.framed).messages] == [1, 2, 3]


async def test_a_dead_store_is_unavailable(store: SqliteStore) -> None:
    repo = Repository(store, None, Policy(window=5))
    await store.close()
    with pytest.raises(UnavailableError):
        await repo.append(append(1))


def test_tier_health_logs_each_change_of_state_exactly_once(caplog: pytest.LogCaptureFixture) -> None:
    health = TierHealth("redis")
    with caplog.at_level("WARNING"):
        for _ in range(3):
            health.mark_down("refused")
        for _ in range(3):
            health.mark_up()
        health.mark_down("again")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "degraded: redis is unavailable (refused)",
        "recovered: redis is available again",
        "degraded: redis is unavailable (again)",
    ]
