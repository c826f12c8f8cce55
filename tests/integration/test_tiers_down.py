"""A tier that is really down (its process stopped or killed): the server keeps working and says so."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest

from chatmem.v1 import preferences_service_pb2 as pp
from chatmem.v1 import resources_pb2 as r
from chatmem.v1 import thread_memory_service_pb2 as pb
from devtools.postgres import PostgresProcess
from devtools.redis import RedisProcess
from tests.conftest import Harness, exchange, make_settings, start_harness

pytestmark = pytest.mark.integration


MODES = ["write_through", "write_behind"]


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def own_redis(mode: str) -> Iterator[RedisProcess]:
    # write_behind is only as durable as Redis: run it with AOF, as the README requires.
    proc = RedisProcess(appendonly=mode == "write_behind")
    proc.start()
    yield proc
    proc.close()


@pytest.fixture
async def h(own_redis: RedisProcess, own_pg: PostgresProcess, mode: str) -> AsyncIterator[Harness]:
    harness = await start_harness(make_settings(database_url=own_pg.url, redis_url=own_redis.url, write_mode=mode))
    yield harness
    await harness.close()


async def until_recovered(h: Harness) -> None:
    redis_health = h.app.repository.redis_health
    assert redis_health is not None
    for _ in range(250):
        if not redis_health.down:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the server never started using Redis again")


async def append(h: Harness, i: int) -> pb.AppendMessagesResponse:
    return await h.threads.AppendMessages(
        pb.AppendMessagesRequest(workspace_id=h.ws, thread_id="t", messages=exchange(i)), timeout=5
    )


async def history(h: Harness) -> pb.GetHistoryResponse:
    return await h.threads.GetHistory(pb.GetHistoryRequest(workspace_id=h.ws, thread_id="t"), timeout=5)


async def test_redis_down_reads_and_writes_go_to_the_store_then_recover_exactly(
    h: Harness, own_redis: RedisProcess, mode: str
) -> None:
    for i in range(30):
        await append(h, i)
    assert (await history(h)).serving.tier == r.TIER_CACHE
    await h.drained()
    own_redis.stop()
    started = time.monotonic()
    written = await append(h, 30)
    # Around Redis the store numbers the write; in write_behind it first skips the seqs that Redis
    # could still hold unflushed, so no seq is ever given twice.
    gap = h.app.settings.outbox.max_unflushed_per_thread if mode == "write_behind" else 0
    assert list(written.seqs) == [61 + gap, 62 + gap]
    assert written.durability == r.DURABILITY_PERSISTED and written.serving.degraded
    expected = [*range(13, 61), 61 + gap, 62 + gap]
    got = await history(h)
    assert got.serving.tier == r.TIER_STORE and got.serving.degraded
    assert [m.seq for m in got.messages] == expected
    prefs = await h.prefs.GetPreferences(pp.GetPreferencesRequest(workspace_id=h.ws, user_id="u"), timeout=5)
    assert prefs.serving.degraded
    assert time.monotonic() - started < 5, "a refused Redis connection must fail fast"
    # write_through: Redis returns empty. write_behind: it returns from its AOF holding the old window
    # (13..60) and the old counter (60), which the recovery must not let the server use.
    own_redis.start()
    await until_recovered(h)
    cold = await history(h)
    assert cold.serving.tier == r.TIER_STORE and not cold.serving.degraded
    assert [m.seq for m in cold.messages] == expected
    warm = await history(h)
    assert warm.serving.tier == r.TIER_CACHE and [m.seq for m in warm.messages] == expected
    after = await append(h, 31)
    assert list(after.seqs) == [63 + gap, 64 + gap]
    assert after.durability == h.durability, "after recovery appends go through Redis again"
    assert [m.seq for m in (await history(h)).messages][-3:] == [62 + gap, 63 + gap, 64 + gap]
    for i in range(32, 40):  # and keep doing so: the fallback gap must not count as unflushed backlog
        assert (await append(h, i)).durability == h.durability


async def test_store_down_cached_reads_serve_and_writes_follow_the_mode(
    h: Harness, own_pg: PostgresProcess, mode: str
) -> None:
    for i in range(30):
        await append(h, i)
    assert (await history(h)).serving.tier == r.TIER_CACHE
    await h.drained()
    own_pg.kill()
    got = await history(h)
    assert got.serving.tier == r.TIER_CACHE and [m.seq for m in got.messages] == list(range(11, 61))
    if mode == "write_through":
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await append(h, 99)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    else:
        # write_behind keeps accepting appends into the outbox while the store is down.
        for i in range(30, 35):
            queued = await append(h, i)
            assert queued.durability == r.DURABILITY_QUEUED and list(queued.seqs) == [2 * i + 1, 2 * i + 2]
        await asyncio.sleep(0.3)  # the flusher has failed by now, so responses say degraded
        degraded = await history(h)
        assert degraded.serving.tier == r.TIER_CACHE and degraded.serving.degraded
        assert [m.seq for m in degraded.messages] == list(range(21, 71))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in h.threads.StreamHistory(pb.StreamHistoryRequest(workspace_id=h.ws, thread_id="t"), timeout=5):
            pass
    assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    own_pg.start()
    written = None
    for _ in range(50):  # the pool replaces its dead connections on the next acquire
        try:
            written = await append(h, 40)
            break
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE
            await asyncio.sleep(0.1)
    assert written is not None
    last = 62 if mode == "write_through" else 72
    assert list(written.seqs) == [last - 1, last]
    await h.drained()
    stored = [
        m.seq
        async for c in h.threads.StreamHistory(pb.StreamHistoryRequest(workspace_id=h.ws, thread_id="t"))
        for m in c.messages
    ]
    assert stored == list(range(1, last + 1))


@pytest.fixture
async def short_budget(own_redis: RedisProcess, own_pg: PostgresProcess, mode: str) -> AsyncIterator[Harness]:
    settings = make_settings(
        database_url=own_pg.url, redis_url=own_redis.url, write_mode=mode, grpc={"default_timeout_s": 1.0}
    )
    harness = await start_harness(settings)
    yield harness
    await harness.close()


async def test_a_frozen_store_costs_a_call_the_server_budget_not_a_hang(
    short_budget: Harness, own_pg: PostgresProcess, mode: str
) -> None:
    h = short_budget
    for i in range(3):
        await append(h, i)
    await h.drained()
    own_pg.pause()
    try:
        # No client deadline: only the server's own time budget (GRPC__DEFAULT_TIMEOUT_S=1) can end these.
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(h.threads.GetThread(pb.GetThreadRequest(workspace_id=h.ws, thread_id="t")), 10)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 2.5
        started = time.monotonic()
        call = h.threads.AppendMessages(
            pb.AppendMessagesRequest(workspace_id=h.ws, thread_id="t", messages=exchange(9))
        )
        if mode == "write_through":
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await asyncio.wait_for(call, 10)
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert time.monotonic() - started < 2.5
        else:
            queued = await asyncio.wait_for(call, 10)  # the outbox does not need the store
            assert queued.durability == r.DURABILITY_QUEUED
        got = await history(h)  # the cached window does not need the store at all
        assert got.serving.tier == r.TIER_CACHE and len(got.messages) in (6, 8)
    finally:
        own_pg.resume()
    recovered = None
    for _ in range(50):
        try:
            recovered = await h.threads.GetThread(pb.GetThreadRequest(workspace_id=h.ws, thread_id="t"), timeout=5)
            break
        except grpc.aio.AioRpcError as exc:
            assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
            await asyncio.sleep(0.1)
    assert recovered is not None
    # A write_through append that timed out may still have committed once the store woke up; a
    # write_behind one was queued and is flushed now. Either way the seqs stay contiguous.
    assert recovered.thread.last_seq in (6, 8)


async def test_both_tiers_down_is_unavailable_fast(
    h: Harness, own_redis: RedisProcess, own_pg: PostgresProcess
) -> None:
    for i in range(3):
        await append(h, i)
    await h.drained()
    own_redis.stop()
    own_pg.kill()
    for call in (
        lambda: h.threads.AppendMessages(
            pb.AppendMessagesRequest(workspace_id=h.ws, thread_id="t", messages=exchange(7)), timeout=5
        ),
        lambda: h.threads.GetHistory(pb.GetHistoryRequest(workspace_id=h.ws, thread_id="t"), timeout=5),
        lambda: h.threads.GetThread(pb.GetThreadRequest(workspace_id=h.ws, thread_id="t"), timeout=5),
    ):
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call()
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
        assert time.monotonic() - started < 2.0, "nothing is pretended, and nothing waits out the deadline"


async def test_reshaping_with_redis_down_is_refused_in_write_behind_and_repaired_in_write_through(
    h: Harness, own_redis: RedisProcess, mode: str
) -> None:
    for i in range(5):
        await append(h, i)
    await h.drained()
    own_redis.stop()
    truncate = pb.TruncateThreadRequest(workspace_id=h.ws, thread_id="t", after_seq=8)
    if mode == "write_behind":
        # Redis may hold acknowledged appends the store has not seen: a truncate now could let them
        # reappear after it, so it waits for Redis instead.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await h.threads.TruncateThread(truncate, timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        own_redis.start()
        await until_recovered(h)
        done = await h.threads.TruncateThread(truncate, timeout=5)
        assert [m.seq for m in done.removed] == [9, 10]
    else:
        done = await h.threads.TruncateThread(truncate, timeout=5)
        assert [m.seq for m in done.removed] == [9, 10] and done.serving.degraded
        own_redis.start()
        await until_recovered(h)
    # the window Redis held before the truncate is never served again
    got = await history(h)
    assert [m.seq for m in got.messages] == list(range(1, 9))
