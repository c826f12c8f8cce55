"""Retention in the repository when Redis is down (an in-memory fake of our Cache Protocol, a real SQLite store)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from server.storage.erasure import Eraser
from server.storage.models import AppendCommand, NewMessage, Role, ThreadKey
from server.storage.repository import Policy, Repository
from server.storage.sql.sqlite.store import SqliteStore
from tests.unit.test_repository import DownCache

KEY = ThreadKey("w", "t")
DAY_US = 86_400_000_000


@pytest.fixture
async def store() -> AsyncIterator[SqliteStore]:
    s = SqliteStore(":memory:")
    await s.migrate()
    yield s
    await s.close()


async def backdate(store: SqliteStore, sql: str) -> None:
    def run() -> None:
        store.db.connection().execute(sql, (time.time_ns() // 1000 - 10 * DAY_US,))

    await store.db.call(run)


async def test_trimming_with_redis_down_marks_the_window_for_repair(store: SqliteStore) -> None:
    repo = Repository(store, DownCache(), Policy(window=5))
    await repo.append(AppendCommand(KEY, tuple(NewMessage(Role.USER, f"m{i}") for i in range(4))))
    await store.repairs.clear_repairs(await store.repairs.list_repairs(100))  # the append's own marks
    await backdate(store, "UPDATE messages SET create_time = ? WHERE seq <= 3")
    cutoff = time.time_ns() // 1000 - DAY_US
    assert await Eraser(repo, store.retention).trim_old_messages(cutoff, batch=2) == (3, 1)
    assert [(r.kind, r.workspace_id, r.object_id) for r in await store.repairs.list_repairs(100)] == [("t", "w", "t")]
    thread = await store.threads.get_thread(KEY)
    assert thread is not None and thread.message_count == 1
    await repo.close()


async def test_write_behind_expires_nothing_while_redis_is_down(store: SqliteStore) -> None:
    writer = Repository(store, None, Policy(window=5))
    await writer.append(AppendCommand(KEY, (NewMessage(Role.USER, "hi"),)))
    await backdate(store, "UPDATE threads SET update_time = ?")
    cutoff = time.time_ns() // 1000 - DAY_US
    behind = Repository(store, DownCache(), Policy(window=5, write_behind=True))
    assert await Eraser(behind, store.retention).expire_idle_threads(cutoff, batch=10) == (0, 0), (
        "queued appends cannot be seen"
    )
    assert await store.threads.get_thread(KEY) is not None
    assert await Eraser(writer, store.retention).expire_idle_threads(cutoff, batch=10) == (1, 1)
    assert await store.threads.get_thread(KEY) is None
    await behind.close()
    await writer.close()
