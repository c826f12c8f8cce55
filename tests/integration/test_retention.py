"""The retention sweeper on every backend: exactly what is past retention goes, from both tiers, once."""

from __future__ import annotations

import asyncio
import logging
import pathlib
import time
from collections.abc import AsyncIterator

import grpc
import pytest
import redis.asyncio as aioredis

from chatmem.v1 import resources_pb2 as r
from chatmem.v1 import thread_memory_service_pb2 as pb
from devtools.postgres import PostgresProcess
from devtools.redis import RedisProcess
from server.storage.erasure import Eraser
from server.storage.repository import Policy, Repository
from server.storage.retention import Sweeper
from server.storage.sql.postgres.store import PostgresStore
from tests import store_rows
from tests.conftest import Harness, exchange, make_settings, msg, start_harness
from tests.integration.conftest import backend_settings
from tests.integration.test_erasure import second_flusher

pytestmark = pytest.mark.integration

DAY_S = 86400.0


def sweeper(h: Harness, batch: int = 2) -> Sweeper:
    """A sweeper over the server's own repository and store, keeping one day."""
    return Sweeper(
        Eraser(h.app.repository, h.app.store.retention),
        h.app.store.retention,
        retention_s=DAY_S,
        interval_s=3600,
        batch=batch,
    )


async def append(h: Harness, thread: str, n: int) -> pb.AppendMessagesResponse:
    messages = [m for i in range(n // 2) for m in exchange(i)] + ([msg("odd")] if n % 2 else [])
    return await h.threads.AppendMessages(
        pb.AppendMessagesRequest(workspace_id=h.ws, thread_id=thread, messages=messages)
    )


async def history_seqs(h: Harness, thread: str) -> list[int]:
    got = await h.threads.GetHistory(pb.GetHistoryRequest(workspace_id=h.ws, thread_id=thread))
    return [m.seq for m in got.messages]


async def listed_seqs(h: Harness, thread: str) -> list[int]:
    got = await h.threads.ListMessages(pb.ListMessagesRequest(workspace_id=h.ws, thread_id=thread))
    return [m.seq for m in got.messages]


async def get_thread(h: Harness, thread: str) -> pb.GetThreadResponse | grpc.StatusCode:
    try:
        return await h.threads.GetThread(pb.GetThreadRequest(workspace_id=h.ws, thread_id=thread))
    except grpc.aio.AioRpcError as exc:
        return exc.code()


async def test_a_sweep_deletes_exactly_what_is_past_retention(api: Harness, caplog: pytest.LogCaptureFixture) -> None:
    await append(api, "old", 3)
    await append(api, "mixed", 4)
    await append(api, "fresh", 2)
    await api.drained()
    await store_rows.backdate_thread(api, api.ws, "old", 10)
    await store_rows.backdate_messages(api, api.ws, "old", 3, 10)
    await store_rows.backdate_messages(api, api.ws, "mixed", 2, 10)
    # Warm the windows: on the cached backends, Redis now holds the messages about to be deleted.
    assert await history_seqs(api, "old") == [1, 2, 3]
    assert await history_seqs(api, "mixed") == [1, 2, 3, 4]

    with caplog.at_level(logging.INFO, logger="chatmem.audit"):
        done = await sweeper(api).sweep_once()
    assert done.swept
    assert (done.threads, done.thread_messages, done.messages, done.trimmed_threads) == (1, 3, 2, 1)
    audits = [rec for rec in caplog.records if rec.name == "chatmem.audit"]
    assert [(rec.action, rec.deleted_threads, rec.deleted_messages) for rec in audits] == [("retention_sweep", 1, 2)]

    assert await get_thread(api, "old") == grpc.StatusCode.NOT_FOUND
    assert await history_seqs(api, "old") == []
    assert await store_rows.seqs(api, api.ws, "old") == []
    assert await store_rows.seqs(api, api.ws, "mixed") == [3, 4]
    assert await history_seqs(api, "mixed") == [3, 4], "the cached window must not serve deleted messages"
    assert await listed_seqs(api, "mixed") == [3, 4]
    mixed = await get_thread(api, "mixed")
    assert isinstance(mixed, pb.GetThreadResponse) and mixed.thread.message_count == 2
    assert await history_seqs(api, "fresh") == [1, 2]

    # The counted length is lowered in every tier; seqs go on; a deleted thread starts again.
    more = await append(api, "mixed", 1)
    assert list(more.seqs) == [5] and more.message_count == 3
    assert list((await append(api, "old", 1)).seqs) == [1]

    with caplog.at_level(logging.INFO, logger="chatmem.audit"):
        caplog.clear()
        again = await sweeper(api).sweep_once()
    assert again.swept and (again.threads, again.messages) == (0, 0)
    assert [rec for rec in caplog.records if rec.name == "chatmem.audit"] == []


@pytest.fixture(params=["postgres+redis", "sqlite+redis"])
async def queued(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> AsyncIterator[Harness]:
    """A write_behind server on each store."""
    h = await start_harness(backend_settings(request, request.param, tmp_path))
    yield h
    await h.close()


async def test_a_thread_with_appends_in_the_outbox_is_active(queued: Harness, redis_proc: RedisProcess) -> None:
    h = queued
    await append(h, "busy", 2)
    await h.drained()
    await store_rows.backdate_thread(h, h.ws, "busy", 10)
    assert h.app.flusher is not None
    await h.app.flusher.stop(5.0)
    assert (await append(h, "busy", 1)).durability == r.DURABILITY_QUEUED

    done = await sweeper(h).sweep_once()
    assert done.swept and done.threads == 0, "the store looks idle, but the outbox holds a new append"

    client = aioredis.Redis.from_url(redis_proc.url)
    flusher = second_flusher(h, client)
    await flusher.start()
    try:
        for _ in range(500):
            if await flusher.depth() == 0:
                break
            await asyncio.sleep(0.02)
        assert await flusher.depth() == 0, "the outbox did not drain"
    finally:
        await flusher.stop(2.0)
        await client.aclose()
    assert await store_rows.seqs(h, h.ws, "busy") == [1, 2, 3]
    assert (await sweeper(h).sweep_once()).threads == 0, "the flush made the thread recent"


async def test_two_sweepers_at_once_on_postgres_neither_fail_nor_double_count(pg_proc: PostgresProcess) -> None:
    h = await start_harness(make_settings(database_url=pg_proc.url))
    other = await PostgresStore.connect(
        pg_proc.url, min_size=1, max_size=4, command_timeout_s=5.0, connect_timeout_s=5.0
    )
    replica = Repository(other, None, Policy(window=50))
    try:
        for i in range(30):
            await append(h, f"old{i:02d}", 2)
        for i in range(5):
            await append(h, f"trim{i}", 4)
        await store_rows.query(
            h,
            "UPDATE threads SET update_time = ? WHERE workspace_id = ? AND thread_id LIKE 'old%'",
            store_rows._time(h, 10),
            h.ws,
        )
        await store_rows.query(
            h,
            "UPDATE messages SET create_time = ? WHERE workspace_id = ? AND thread_id LIKE 'trim%' AND seq <= 2",
            store_rows._time(h, 10),
            h.ws,
        )
        sweepers = [
            Sweeper(
                Eraser(h.app.repository, h.app.store.retention),
                h.app.store.retention,
                retention_s=DAY_S,
                interval_s=3600,
                batch=7,
            ),
            Sweeper(Eraser(replica, other.retention), other.retention, retention_s=DAY_S, interval_s=3600, batch=7),
        ]
        results = await asyncio.gather(*(s.sweep_once() for s in sweepers))
        assert any(res.swept for res in results)
        assert sum(res.threads for res in results) == 30
        assert sum(res.thread_messages for res in results) == 60
        assert sum(res.messages for res in results) == 10
        assert await store_rows.threads(h, h.ws) == [f"trim{i}" for i in range(5)]

        # The store's batch itself, raced without the lease: each message is deleted and counted once.
        await store_rows.query(
            h,
            "UPDATE messages SET create_time = ? WHERE workspace_id = ? AND thread_id LIKE 'trim%' AND seq = 3",
            store_rows._time(h, 10),
            h.ws,
        )
        cutoff_us = int((time.time() - DAY_S) * 1_000_000)
        raced = await asyncio.gather(
            h.app.store.retention.trim_messages(cutoff_us, 100), other.retention.trim_messages(cutoff_us, 100)
        )
        assert sum(t.count for batch in raced for t in batch) == 5
        counts = await store_rows.query(
            h, "SELECT message_count FROM threads WHERE workspace_id = ? AND thread_id LIKE 'trim%'", h.ws
        )
        assert [c[0] for c in counts] == [1] * 5
    finally:
        await other.close()
        await h.close()


async def test_the_server_sweeps_by_itself_when_retention_is_set(tmp_path: pathlib.Path) -> None:
    settings = make_settings(
        sqlite_path=str(tmp_path / "swept.db"), retention_days=1 / DAY_S, retention_sweep_interval_s=0.1
    )
    h = await start_harness(settings)
    try:
        assert h.app.sweeper is not None
        await append(h, "soon-gone", 2)
        for _ in range(200):
            if await get_thread(h, "soon-gone") == grpc.StatusCode.NOT_FOUND:
                break
            await asyncio.sleep(0.05)
        assert await get_thread(h, "soon-gone") == grpc.StatusCode.NOT_FOUND
    finally:
        await h.close()


async def test_without_retention_there_is_no_sweeper(sqlite_api: Harness) -> None:
    assert sqlite_api.app.settings.memory.retention_days is None
    assert sqlite_api.app.sweeper is None
