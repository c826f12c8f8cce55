"""Request ids, JSON logs, the Prometheus endpoint and tracing, on a real server with real Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import json
import pathlib
import re
import socket
import urllib.request
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from chatmem.v1 import preferences_service_pb2 as pp
from chatmem.v1 import thread_memory_service_pb2 as pb
from devtools.ports import free_port
from devtools.postgres import PostgresProcess
from devtools.redis import RedisProcess
from devtools.server import ServerProcess
from server.app import create_server
from server.config import MetricsSettings, QuotaSettings, TracingSettings
from server.storage.health import TierHealth
from server.storage.redis.keys import KeySpace
from server.storage.redis.outbox import Flusher
from tests.conftest import Harness, exchange, make_settings, msg, start_harness

pytestmark = pytest.mark.integration

HEX32 = re.compile(r"[0-9a-f]{32}")
GRPC_CORE_LINE = re.compile(r"[EWID]\d{4} \d\d:\d\d:\d\d|=== Source Location Trace|src/core/")


def request_id_of(metadata: Any) -> str:
    return str(dict(metadata or ())["x-request-id"])


async def test_request_id_is_echoed_given_or_generated(sqlite_api: Harness) -> None:
    h = sqlite_api
    call = h.threads.AppendMessages(
        pb.AppendMessagesRequest(workspace_id=h.ws, thread_id="t", messages=exchange(1)),
        metadata=(("x-request-id", "req-42.a:b@c"),),
    )
    await call
    assert request_id_of(await call.trailing_metadata()) == "req-42.a:b@c"
    # GetHistory's handler returns pre-serialised bytes.
    call = h.threads.GetHistory(pb.GetHistoryRequest(workspace_id=h.ws, thread_id="t"))
    assert len((await call).messages) == 2
    generated = request_id_of(await call.trailing_metadata())
    assert HEX32.fullmatch(generated)
    # Unsafe or oversized ids are replaced, never echoed.
    for bad in ("has space", "x" * 129, "semi;colon", "<tag>", 'quo"te'):
        call = h.threads.GetHistory(
            pb.GetHistoryRequest(workspace_id=h.ws, thread_id="t"), metadata=(("x-request-id", bad),)
        )
        await call
        assert HEX32.fullmatch(request_id_of(await call.trailing_metadata()))
    # A refused request carries it too.
    call = h.threads.GetThread(
        pb.GetThreadRequest(workspace_id=h.ws, thread_id="nope"), metadata=(("x-request-id", "r-404"),)
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert request_id_of(await call.trailing_metadata()) == "r-404"
    # And a stream.
    stream = h.threads.StreamHistory(
        pb.StreamHistoryRequest(workspace_id=h.ws, thread_id="t"), metadata=(("x-request-id", "stream-1"),)
    )
    chunks = [c async for c in stream]
    assert sum(len(c.messages) for c in chunks) == 2
    assert request_id_of(await stream.trailing_metadata()) == "stream-1"


async def test_echo_can_be_turned_off() -> None:
    h = await start_harness(make_settings().model_copy(update={"echo_request_id": False}))
    try:
        call = h.threads.GetHistory(pb.GetHistoryRequest(thread_id="t"), metadata=(("x-request-id", "quiet-1"),))
        await call
        assert "x-request-id" not in dict(await call.trailing_metadata() or ())
    finally:
        await h.close()


async def test_json_logs_carry_the_request_id(tmp_path: pathlib.Path) -> None:
    server = ServerProcess(
        {"LOG_FORMAT": "json", "LOG_LEVEL": "DEBUG", "DATABASE__SQLITE_PATH": str(tmp_path / "c.db")}, str(tmp_path)
    )
    server.start()
    try:
        async with grpc.aio.insecure_channel(server.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            await health.Check(health_pb2.HealthCheckRequest(), timeout=30, wait_for_ready=True)
            threads = pb_grpc_stub(channel)
            await threads.GetHistory(
                pb.GetHistoryRequest(thread_id="t"), metadata=(("x-request-id", "json-log-1"),), timeout=10
            )
            with pytest.raises(grpc.aio.AioRpcError):
                await threads.GetHistory(
                    pb.GetHistoryRequest(thread_id="bad id"), metadata=(("x-request-id", "json-log-2"),), timeout=10
                )
    finally:
        assert server.stop() == 0
    # Every line is one JSON object, except what gRPC's C core writes to stderr itself (E1121 12:00:00...).
    lines = [line for line in server.log().splitlines() if line.strip() and not GRPC_CORE_LINE.match(line)]
    records = [json.loads(line) for line in lines]
    assert all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
    access = {r["request_id"]: r for r in records if r["logger"] == "chatmem.access" and "request_id" in r}
    assert access["json-log-1"]["method"] == "GetHistory"
    assert access["json-log-1"]["code"] == "OK"
    assert access["json-log-1"]["level"] == "DEBUG"
    assert access["json-log-2"]["code"] == "INVALID_ARGUMENT"
    assert any(r["msg"].startswith("chatmem listening") for r in records)


def pb_grpc_stub(channel: grpc.aio.Channel) -> Any:
    from chatmem.v1 import thread_memory_service_pb2_grpc

    return thread_memory_service_pb2_grpc.ThreadMemoryServiceStub(channel)


def scrape(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def samples(
    families: dict[str, Any], family: str, sample: str | None = None
) -> dict[tuple[tuple[str, str], ...], float]:
    found = families[family]
    name = sample or family
    return {tuple(sorted(s.labels.items())): s.value for s in found.samples if s.name == name}


@pytest.fixture
async def observed(pg_proc: PostgresProcess, redis_proc: RedisProcess) -> AsyncIterator[Harness]:
    s = make_settings(database_url=pg_proc.url, redis_url=redis_proc.url)
    s = s.model_copy(
        update={
            "metrics": MetricsSettings(address="127.0.0.1:0", sample_interval_s=0.1),
            "quota": QuotaSettings(append_bytes_per_s=10, append_bytes_burst=1000),
        }
    )
    h = await start_harness(s)
    yield h
    await h.close()


async def test_metrics_endpoint_exposes_every_series(observed: Harness, redis_client: aioredis.Redis) -> None:
    h = observed
    assert h.app.metrics is not None
    port = h.app.metrics.port
    await h.threads.AppendMessages(pb.AppendMessagesRequest(workspace_id=h.ws, thread_id="t", messages=exchange(1)))
    await h.threads.GetHistory(pb.GetHistoryRequest(workspace_id=h.ws, thread_id="t"))  # a hit
    await h.drained()
    await redis_client.delete(KeySpace(h.app.settings.redis.key_prefix).thread(h.ws, "t").msgs)
    await h.threads.GetHistory(pb.GetHistoryRequest(workspace_id=h.ws, thread_id="t"))  # a miss and a hydration
    with pytest.raises(grpc.aio.AioRpcError):
        await h.threads.GetThread(pb.GetThreadRequest(workspace_id=h.ws, thread_id="missing"))
    await h.prefs.GetPreferences(pp.GetPreferencesRequest(workspace_id=h.ws, user_id="u"))
    # 2,000 bytes pass with a full bucket of 1,000 and leave a debt: the next append is refused.
    big = pb.AppendMessagesRequest(workspace_id=h.ws + "-big", thread_id="big", messages=[msg("x" * 2000)])
    await h.threads.AppendMessages(big)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await h.threads.AppendMessages(big)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    families: dict[str, Any] = {}
    for _ in range(100):  # bounded: the sampler fills the pool and outbox gauges within its first round
        families = await asyncio.to_thread(scrape, port)
        if samples(families, "chatmem_postgres_pool_connections") and samples(
            families, "chatmem_redis_pool_connections"
        ):
            break
        await asyncio.sleep(0.05)

    rpcs = samples(families, "chatmem_rpcs", "chatmem_rpcs_total")
    assert rpcs[(("code", "OK"), ("method", "AppendMessages"))] >= 2
    assert rpcs[(("code", "OK"), ("method", "GetHistory"))] >= 2
    assert rpcs[(("code", "NOT_FOUND"), ("method", "GetThread"))] == 1
    assert rpcs[(("code", "RESOURCE_EXHAUSTED"), ("method", "AppendMessages"))] == 1
    assert rpcs[(("code", "OK"), ("method", "GetPreferences"))] == 1
    counts = samples(families, "chatmem_rpc_duration_seconds", "chatmem_rpc_duration_seconds_count")
    assert counts[(("code", "OK"), ("method", "GetHistory"))] >= 2
    buckets = samples(families, "chatmem_rpc_duration_seconds", "chatmem_rpc_duration_seconds_bucket")
    assert buckets[(("code", "OK"), ("le", "+Inf"), ("method", "GetHistory"))] >= 2

    cache = samples(families, "chatmem_cache_requests", "chatmem_cache_requests_total")
    assert cache[(("kind", "window"), ("result", "hit"))] >= 1
    assert cache[(("kind", "window"), ("result", "miss"))] >= 1
    assert cache[(("kind", "preferences"), ("result", "miss"))] == 1
    assert samples(families, "chatmem_cache_hydrations", "chatmem_cache_hydrations_total")[()] >= 1

    assert set(samples(families, "chatmem_outbox_depth")) == {()}
    assert samples(families, "chatmem_outbox_oldest_age_seconds")[()] >= 0
    tiers = samples(families, "chatmem_tier_up")
    assert tiers == {(("tier", "cache"),): 1.0, (("tier", "store"),): 1.0}
    redis_pool = samples(families, "chatmem_redis_pool_connections")
    assert {dict(k)["state"] for k in redis_pool} == {"created", "in_use", "available", "max"}
    assert redis_pool[(("state", "max"),)] == h.app.settings.redis.max_connections
    assert redis_pool[(("state", "created"),)] >= 1
    pg_pool = samples(families, "chatmem_postgres_pool_connections")
    assert {dict(k)["state"] for k in pg_pool} == {"size", "idle", "max"}
    assert pg_pool[(("state", "max"),)] == h.app.settings.database.pool_max_size

    rejections = samples(families, "chatmem_quota_rejections", "chatmem_quota_rejections_total")
    assert rejections == {
        (("kind", "bytes"),): 1.0,
        (("kind", "in_flight"),): 0.0,
        (("kind", "requests"),): 0.0,
        (("kind", "streams"),): 0.0,
    }


async def test_tier_gauge_shows_a_frozen_redis() -> None:
    own = RedisProcess()
    own.start()
    s = make_settings(redis_url=own.url, write_mode="write_through")
    h = await start_harness(
        s.model_copy(update={"metrics": MetricsSettings(address="127.0.0.1:0", sample_interval_s=0.05)})
    )
    assert h.app.metrics is not None
    try:
        own.pause()
        try:
            await h.threads.GetHistory(pb.GetHistoryRequest(workspace_id=h.ws, thread_id="t"))
            tiers: dict[Any, float] = {}
            for _ in range(100):  # bounded
                tiers = samples(await asyncio.to_thread(scrape, h.app.metrics.port), "chatmem_tier_up")
                if tiers.get((("tier", "cache"),)) == 0:
                    break
                await asyncio.sleep(0.05)
            assert tiers == {(("tier", "cache"),): 0.0, (("tier", "store"),): 1.0}
        finally:
            own.resume()
    finally:
        await h.close()
        own.close()


async def test_outbox_backlog_counts_entries_and_their_age(
    redis_proc: RedisProcess, redis_client: aioredis.Redis
) -> None:
    keys = KeySpace(f"bk{uuid.uuid4().hex[:8]}")
    flusher = Flusher(
        redis_client, keys, store=None,  # type: ignore[arg-type]  # backlog() never touches the store
        consumer="c", batch_size=10, block_ms=10, claim_idle_ms=1000, claim_interval_s=1, cluster=False,
        store_health=TierHealth("store"),
    )  # fmt: skip
    assert await flusher.backlog() == (0, 0.0)
    seconds, _ = await redis_client.time()
    old_ms = (int(seconds) - 30) * 1000
    await redis_client.xadd(keys.outbox(3), {"x": "1"}, id=f"{old_ms}-0")
    await redis_client.xadd(keys.outbox(200), {"x": "1"})
    depth, age = await flusher.backlog()
    assert depth == 2
    assert 29 <= age < 3600
    await redis_client.delete(keys.outbox(3), keys.outbox(200))


async def test_tracing_spans_per_rpc() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind, StatusCode

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    s = make_settings().model_copy(update={"tracing": TracingSettings(enabled=True)})
    app = await create_server(s, tracer_provider=provider)
    await app.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
    threads = pb_grpc_stub(channel)
    try:
        trace_id = uuid.uuid4().hex
        parent = f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"
        await threads.GetHistory(
            pb.GetHistoryRequest(thread_id="t"), metadata=(("x-request-id", "span-1"), ("traceparent", parent))
        )
        with pytest.raises(grpc.aio.AioRpcError):
            await threads.GetThread(pb.GetThreadRequest(thread_id="missing"))
        spans = {span.name: span for span in exporter.get_finished_spans()}
        ok = spans["chatmem.v1.ThreadMemoryService/GetHistory"]
        assert ok.kind == SpanKind.SERVER
        assert ok.attributes is not None
        assert ok.attributes["rpc.method"] == "GetHistory"
        assert ok.attributes["chatmem.request_id"] == "span-1"
        assert ok.attributes["rpc.grpc.status_code"] == 0
        assert format(ok.context.trace_id, "032x") == trace_id  # continues the caller's trace
        failed = spans["chatmem.v1.ThreadMemoryService/GetThread"]
        assert failed.attributes is not None
        assert failed.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
        assert failed.status.status_code == StatusCode.ERROR
    finally:
        await channel.close()
        await app.stop(grace_s=1.0)


def two_free_ports() -> int:
    """A port P such that P and P + 1 are both free right now."""
    for _ in range(50):  # bounded
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise AssertionError("no two consecutive free ports")


async def test_each_worker_serves_metrics_on_its_own_port(tmp_path: pathlib.Path, pg_proc: PostgresProcess) -> None:
    base = two_free_ports()
    server = ServerProcess(
        {"DATABASE__URL": pg_proc.url, "GRPC__WORKERS": "2", "METRICS__ADDRESS": f"127.0.0.1:{base}"}, str(tmp_path)
    )
    server.start()
    try:
        async with grpc.aio.insecure_channel(server.target) as channel:
            await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=30, wait_for_ready=True
            )
        scraped: dict[int, dict[str, Any]] = {}
        for _ in range(200):  # bounded: 200 x 50 ms for both workers to bind
            for port in (base, base + 1):
                if port not in scraped:
                    with contextlib.suppress(OSError):  # not bound yet
                        scraped[port] = await asyncio.to_thread(scrape, port)
            if len(scraped) == 2:
                break
            await asyncio.sleep(0.05)
        assert set(scraped) == {base, base + 1}, server.log()[-2000:]
        for families in scraped.values():
            assert "chatmem_postgres_pool_connections" in families
    finally:
        assert server.stop() == 0
