"""Issue #11, case 3: with every tier healthy, a read past the cache window is not degradation.

GetHistory with ``limit`` above MEMORY__MAX_THREAD_MESSAGES and GetContext with ``max_messages`` above it
may be served from the store (TIER_STORE), but they must say degraded=false. Real PostgreSQL, Redis and a
server process, in both write modes.
"""

from __future__ import annotations

import pathlib
import uuid

import grpc
import pytest

from chatmem.v1 import resources_pb2 as r
from chatmem.v1 import thread_memory_service_pb2 as pb
from chatmem.v1 import thread_memory_service_pb2_grpc as pb_grpc
from devtools import chaos
from devtools.faultkit import append_retrying, server_env, start_server
from devtools.postgres import PostgresProcess
from devtools.redis import RedisProcess

pytestmark = pytest.mark.integration

WINDOW = 5


@pytest.mark.parametrize("mode", ["write_behind", "write_through"])
async def test_reads_past_the_window_on_healthy_tiers_are_not_degraded(
    redis_proc: RedisProcess, pg_proc: PostgresProcess, tmp_path: pathlib.Path, mode: str
) -> None:
    prefix, ws = f"cm{uuid.uuid4().hex[:6]}", f"ws-{uuid.uuid4().hex[:8]}"
    env = server_env(
        redis_url=redis_proc.url, pg_url=pg_proc.url, prefix=prefix, mode=mode, MEMORY__MAX_THREAD_MESSAGES=str(WINDOW)
    )
    server = await start_server(env, str(tmp_path))
    try:
        contents = [f"m{i}" for i in range(8)]
        for c in contents:
            await append_retrying(server.target, ws, "T", c)
        if mode == "write_behind":
            await chaos.wait_drained(redis_proc.url, prefix, 20)
        problems = []
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = pb_grpc.ThreadMemoryServiceStub(channel)
            inside = await stub.GetHistory(pb.GetHistoryRequest(workspace_id=ws, thread_id="T", limit=3), timeout=5)
            assert [m.content for m in inside.messages] == contents[-3:]
            if inside.serving.degraded:
                problems.append(f"GetHistory limit=3 (inside the window): degraded=true, {inside.serving}")
            past = await stub.GetHistory(pb.GetHistoryRequest(workspace_id=ws, thread_id="T", limit=20), timeout=5)
            assert [m.content for m in past.messages] == contents, [m.content for m in past.messages]
            if past.serving.degraded:
                problems.append(
                    f"GetHistory limit=20 > window {WINDOW}: degraded=true tier={r.Tier.Name(past.serving.tier)}"
                )
            ctx = await stub.GetContext(
                pb.GetContextRequest(workspace_id=ws, thread_id="T", max_messages=20), timeout=5
            )
            assert ctx.message_count == len(contents), ctx.message_count
            if ctx.serving.degraded:
                problems.append(
                    f"GetContext max_messages=20 > window {WINDOW}: degraded=true tier={r.Tier.Name(ctx.serving.tier)}"
                )
        assert not problems, "\n".join(problems)
    finally:
        server.kill()
