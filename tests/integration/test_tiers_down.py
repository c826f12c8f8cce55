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
from tests.conftest import Harness, exchange, make_settings, start_harness
from tests.procs import PostgresProcess, RedisProcess

pytestmark = pytest.mark.integration


@pytest.fixture
def own_redis() -> Iterator[RedisProcess]:
    proc = RedisProcess()
    proc.start()
    yield proc
    proc.close()


@pytest.fixture
def own_pg() -> Iterator[PostgresProcess]:
    proc = PostgresProcess()
    proc.start()
    yield proc
    proc.close()


@pytest.fixture
async def h(own_redis: RedisProcess, own_pg: PostgresProcess) -> AsyncIterator[Harness]:
    harness = await start_harness(make_settings(database_url=own_pg.url, redis_url=own_redis.url))
    yield harness
    await harness.close()


async def append(h: Harness, i: int) -> pb.AppendMessagesResponse:
    return await h.threads.AppendMessages(
        pb.AppendMessagesRequest(workspace_id=h.ws, thread_id="t", messages=exchange(i)), timeout=5
    )


async def history(h: Harness) -> pb.GetHistoryResponse:
    return await h.threads.GetHistory(pb.GetHistoryRequest(workspace_id=h.ws, thread_id="t"), timeout=5)


async def test_redis_down_reads_and_writes_go_to_the_store_then_recover_exactly(
    h: Harness, own_redis: RedisProcess
) -> None:
    for i in range(30):
        await append(h, i)
    assert (await history(h)).serving.tier == r.TIER_CACHE
    own_redis.stop()
    started = time.monotonic()
    written = await append(h, 30)
    assert written.durability == r.DURABILITY_PERSISTED and written.serving.degraded
    got = await history(h)
    assert got.serving.tier == r.TIER_STORE and got.serving.degraded
    assert [m.seq for m in got.messages] == list(range(13, 63))
    prefs = await h.prefs.GetPreferences(pp.GetPreferencesRequest(workspace_id=h.ws, user_id="u"), timeout=5)
    assert prefs.serving.degraded
    assert time.monotonic() - started < 5, "a refused Redis connection must fail fast"
    own_redis.start()  # comes back empty (no persistence): the window is rebuilt from the store
    cold = await history(h)
    assert cold.serving.tier == r.TIER_STORE and not cold.serving.degraded
    assert [m.seq for m in cold.messages] == list(range(13, 63))
    warm = await history(h)
    assert warm.serving.tier == r.TIER_CACHE and [m.seq for m in warm.messages] == list(range(13, 63))


async def test_store_down_write_through_is_unavailable_but_cached_reads_still_serve(
    h: Harness, own_pg: PostgresProcess
) -> None:
    for i in range(30):
        await append(h, i)
    assert (await history(h)).serving.tier == r.TIER_CACHE
    own_pg.kill()
    got = await history(h)
    assert got.serving.tier == r.TIER_CACHE and [m.seq for m in got.messages] == list(range(11, 61))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await append(h, 99)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in h.threads.StreamHistory(pb.StreamHistoryRequest(workspace_id=h.ws, thread_id="t"), timeout=5):
            pass
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    own_pg.start()
    written = None
    for _ in range(50):  # the pool replaces its dead connections on the next acquire
        try:
            written = await append(h, 30)
            break
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE
            await asyncio.sleep(0.1)
    assert written is not None and list(written.seqs) == [61, 62]
    assert [m.seq for m in (await history(h)).messages] == list(range(13, 63))


async def test_a_frozen_store_costs_the_caller_its_deadline_not_a_hang(h: Harness, own_pg: PostgresProcess) -> None:
    for i in range(3):
        await append(h, i)
    own_pg.pause()
    try:
        calls = (  # grpc.aio starts an RPC when the call object is made, so make each one when it is due
            lambda: h.threads.GetThread(pb.GetThreadRequest(workspace_id=h.ws, thread_id="t"), timeout=1),
            lambda: h.threads.AppendMessages(
                pb.AppendMessagesRequest(workspace_id=h.ws, thread_id="t", messages=exchange(9)), timeout=1
            ),
        )
        for call in calls:
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call()
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert time.monotonic() - started < 2.5
        # The cached window does not need the store at all.
        got = await history(h)
        assert got.serving.tier == r.TIER_CACHE and len(got.messages) == 6
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
    # The append that timed out may have committed after the resume; its seqs are contiguous either way.
    assert recovered.thread.last_seq in (6, 8)
