"""Quotas and admission on a real server: token buckets in Redis and their local fallback, in-flight and stream caps."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from chatmem.v1 import thread_memory_service_pb2 as pb
from devtools.postgres import PostgresProcess
from devtools.redis import RedisProcess
from server.config import QuotaSettings, Settings
from server.storage.redis.keys import KeySpace
from tests.conftest import Harness, make_settings, msg, start_harness

pytestmark = pytest.mark.integration


def quota_settings(redis_url: str | None = None, *, redis: dict[str, Any] | None = None, **quota: Any) -> Settings:
    s = make_settings(redis_url=redis_url, write_mode="write_through" if redis_url else None)
    update: dict[str, Any] = {"quota": QuotaSettings(**quota)}
    if redis:
        update["redis"] = s.redis.model_copy(update=redis)
    return s.model_copy(update=update)


def refusal(err: grpc.aio.AioRpcError) -> tuple[str, float]:
    """The refusal's message and its RetryInfo delay (which must be there)."""
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return status.message, info.retry_delay.ToTimedelta().total_seconds()
    raise AssertionError(f"no RetryInfo in {status}")


async def history(h: Harness, ws: str | None = None, thread: str = "t") -> pb.GetHistoryResponse:
    return await h.threads.GetHistory(pb.GetHistoryRequest(workspace_id=ws or h.ws, thread_id=thread))


async def refused(call: Any) -> tuple[str, float]:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return refusal(err.value)


async def test_request_quota_trips_and_recovers_in_redis(redis_proc: RedisProcess) -> None:
    h = await start_harness(quota_settings(redis_proc.url, requests_per_s=5, requests_burst=3))
    client = aioredis.Redis.from_url(redis_proc.url)
    try:
        for _ in range(3):
            await history(h)
        message, delay = await refused(history(h))
        assert "requests quota" in message
        assert 0 < delay <= 0.2 + 0.001  # one token at 5/s
        # Quotas are per workspace.
        await history(h, ws=h.ws + "-other")
        # The bucket lives in Redis (so every replica shares it).
        assert await client.exists(KeySpace(h.app.settings.redis.key_prefix).quota(h.ws)[0])
        await asyncio.sleep(delay)
        await history(h)
    finally:
        await client.aclose()
        await h.close()


async def test_two_replicas_share_the_bucket(redis_proc: RedisProcess) -> None:
    first = quota_settings(redis_proc.url, requests_per_s=0.5, requests_burst=2)
    second = first.model_copy()  # same key prefix: the same Redis buckets
    a, b = await start_harness(first), await start_harness(second)
    try:
        await history(a, ws=a.ws)
        await history(b, ws=a.ws)
        _, delay = await refused(history(a, ws=a.ws))
        assert delay > 0.5  # a token takes 2 s at 0.5/s
        await refused(history(b, ws=a.ws))
    finally:
        await a.close()
        await b.close()


async def test_append_bytes_quota_counts_content_and_recovers(redis_proc: RedisProcess) -> None:
    h = await start_harness(quota_settings(redis_proc.url, append_bytes_per_s=1000, append_bytes_burst=2000))
    try:
        append = pb.AppendMessagesRequest(workspace_id=h.ws, thread_id="t", messages=[msg("é" * 1000)])  # 2000 bytes
        await h.threads.AppendMessages(append)
        small = pb.AppendMessagesRequest(workspace_id=h.ws, thread_id="t", messages=[msg("x" * 100)])
        message, delay = await refused(h.threads.AppendMessages(small))
        assert "bytes quota" in message
        assert 0 < delay <= 0.1 + 0.001
        got = await history(h)  # reads do not draw on the bytes bucket
        assert len(got.messages) == 1
        await asyncio.sleep(delay)
        await h.threads.AppendMessages(small)
        # An append larger than the burst passes once the bucket is full and leaves a debt.
        big = pb.AppendMessagesRequest(workspace_id=h.ws + "-big", thread_id="t", messages=[msg("y" * 50_000)])
        await h.threads.AppendMessages(big)
        _, delay = await refused(h.threads.AppendMessages(big))
        assert delay > 40  # 48,000 bytes of debt and then 2,000 at 1,000/s
    finally:
        await h.close()


async def test_local_buckets_without_redis() -> None:
    h = await start_harness(quota_settings(None, requests_per_s=5, requests_burst=2))
    try:
        await history(h)
        await history(h)
        message, delay = await refused(history(h))
        assert "requests quota" in message
        await asyncio.sleep(delay)
        await history(h)
    finally:
        await h.close()


async def test_frozen_redis_falls_back_to_local_buckets_and_back(own_redis: RedisProcess) -> None:
    # A slow refill: the frozen Redis costs each early call up to two 0.5 s socket timeouts.
    h = await start_harness(quota_settings(own_redis.url, requests_per_s=0.2, requests_burst=2))
    client = aioredis.Redis.from_url(own_redis.url)
    quota_key = KeySpace(h.app.settings.redis.key_prefix).quota(h.ws)[0]
    try:
        await history(h)  # charged in Redis
        assert await client.exists(quota_key)
        own_redis.pause()
        try:
            # The first call waits out one socket timeout and then uses the fresh local bucket (2 tokens).
            await history(h)
            await history(h)
            message, _ = await refused(history(h))
            assert "requests quota" in message
        finally:
            own_redis.resume()
        await client.delete(quota_key)
        redis_health = h.app.repository.redis_health
        assert redis_health is not None
        for _ in range(300):  # bounded: 300 x 20 ms
            if not redis_health.down:
                break
            await asyncio.sleep(0.02)
        assert not redis_health.down, "redis was never used again"
        # Redis is used again once the quota's retry interval passed: the bucket reappears there.
        for _ in range(100):
            try:
                await history(h)
            except grpc.aio.AioRpcError as err:
                refusal(err)
            if await client.exists(quota_key):
                break
            await asyncio.sleep(0.05)
        assert await client.exists(quota_key)
    finally:
        await client.aclose()
        await h.close()


async def wait_for(predicate: Any, what: str) -> None:
    for _ in range(250):  # bounded: 250 x 20 ms
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def test_in_flight_cap_sheds_at_once(own_redis: RedisProcess) -> None:
    # Requests stall on a frozen Redis (3 s socket timeout) so that two stay in flight.
    settings = quota_settings(own_redis.url, max_in_flight=2, in_flight_retry_s=0.25, redis={"socket_timeout_s": 3.0})
    h = await start_harness(settings)
    admission = h.app.admission
    assert admission is not None
    stalled: list[asyncio.Task[Any]] = []
    try:
        own_redis.pause()
        try:
            stalled = [asyncio.ensure_future(history(h, thread=f"t{i}")) for i in range(2)]
            await wait_for(lambda: admission.in_flight == 2, "two requests in flight")
            message, delay = await refused(history(h, thread="t3"))
            assert "concurrent requests" in message
            assert delay == pytest.approx(0.25)
        finally:
            own_redis.resume()
        await asyncio.gather(*stalled)
        assert admission.in_flight == 0
        await history(h)
    finally:
        for task in stalled:
            task.cancel()
        await h.close()


def stream_settings(pg: PostgresProcess, redis_url: str | None, prefix: str) -> Settings:
    s = make_settings(database_url=pg.url, redis_url=redis_url, write_mode="write_through" if redis_url else None)
    return s.model_copy(
        update={
            "quota": QuotaSettings(max_streams_per_workspace=2),
            "redis": s.redis.model_copy(update={"key_prefix": prefix}),
        }
    )


async def drain(h: Harness, ws: str) -> list[Any]:
    return [c async for c in h.threads.StreamHistory(pb.StreamHistoryRequest(workspace_id=ws, thread_id="t"))]


async def finish(tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        try:
            await task
        except grpc.aio.AioRpcError as err:  # a stream may have met the frozen store's timeout
            assert err.code() != grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_stream_cap_is_shared_by_replicas(own_pg: PostgresProcess, redis_proc: RedisProcess) -> None:
    # Streams read PostgreSQL; freezing it holds them open while Redis keeps their leases.
    prefix = f"cm{uuid.uuid4().hex[:8]}"
    a = await start_harness(stream_settings(own_pg, redis_proc.url, prefix))
    b = await start_harness(stream_settings(own_pg, redis_proc.url, prefix))
    client = aioredis.Redis.from_url(redis_proc.url)
    leases = KeySpace(prefix).streams(a.ws)
    await a.threads.AppendMessages(pb.AppendMessagesRequest(workspace_id=a.ws, thread_id="t", messages=[msg("hi")]))
    held: list[asyncio.Task[Any]] = []
    try:
        own_pg.pause()
        try:
            held = [asyncio.ensure_future(drain(a, a.ws)), asyncio.ensure_future(drain(b, a.ws))]
            for _ in range(250):  # bounded: 250 x 20 ms
                if await client.zcard(leases) == 2:
                    break
                await asyncio.sleep(0.02)
            assert await client.zcard(leases) == 2
            for h in (a, b):
                message, delay = await refused(drain(h, a.ws))
                assert "2 streams open" in message
                assert delay > 0
            held.append(asyncio.ensure_future(drain(b, b.ws)))  # another workspace is not capped
            for _ in range(250):
                if await client.zcard(KeySpace(prefix).streams(b.ws)) == 1:
                    break
                await asyncio.sleep(0.02)
            assert await client.zcard(KeySpace(prefix).streams(b.ws)) == 1
        finally:
            own_pg.resume()
        await finish(held)
        assert await client.zcard(leases) == 0  # released at the end of each stream
        assert a.app.admission is not None and a.app.admission.streams == {}  # nothing counted locally
        chunks = await drain(b, a.ws)
        assert [m.content for c in chunks for m in c.messages] == ["hi"]
    finally:
        for task in held:
            task.cancel()
        await client.aclose()
        await a.close()
        await b.close()


async def test_stream_cap_without_redis_is_per_process(own_pg: PostgresProcess) -> None:
    h = await start_harness(stream_settings(own_pg, None, "unused"))
    admission = h.app.admission
    assert admission is not None
    held: list[asyncio.Task[Any]] = []
    other = h.ws + "-b"
    try:
        own_pg.pause()
        try:
            held = [asyncio.ensure_future(drain(h, h.ws)) for _ in range(2)]
            await wait_for(lambda: admission.streams.get(h.ws) == 2, "two streams open")
            message, _ = await refused(drain(h, h.ws))
            assert "2 streams open" in message
            held.append(asyncio.ensure_future(drain(h, other)))
            await wait_for(lambda: admission.streams.get(other) == 1, "the other workspace's stream")
        finally:
            own_pg.resume()
        await finish(held)
        assert admission.streams == {}
    finally:
        for task in held:
            task.cancel()
        await h.close()


async def test_stream_leases_lapse_and_renew(redis_proc: RedisProcess) -> None:
    from server.admission.quota import StreamLeases

    client = aioredis.Redis.from_url(redis_proc.url)
    keys = KeySpace(f"cm{uuid.uuid4().hex[:8]}")
    leases = StreamLeases(client, keys, owner="p1", lease_s=0.2)
    try:
        first, count = await leases.acquire("w", 2)
        assert first is not None and count == 1
        second, count = await leases.acquire("w", 2)
        assert second is not None and count == 2
        assert await leases.acquire("w", 2) == (None, 2)
        await asyncio.sleep(0.3)  # more than the lease on Redis's clock: as if this replica had crashed
        third, count = await leases.acquire("w", 2)
        assert third is not None and count == 1
        # Renewal re-adds every lease this process still holds, lapsed or not.
        await leases.renew()
        assert await client.zcard(keys.streams("w")) == 3
        for member in (first, second, third):
            await leases.release("w", member)
        assert await client.zcard(keys.streams("w")) == 0
        assert leases.held == {}
    finally:
        await client.aclose()
