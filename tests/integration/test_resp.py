"""The auto-pipelined Redis connection on a real redis-server: order, errors, a frozen and a killed server."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from devtools.redis import RedisProcess
from server.storage.redis.connection import PipelinedRedis

pytestmark = pytest.mark.integration

ECHO = "return ARGV[1]"


@pytest.fixture
async def client(own_redis: RedisProcess) -> AsyncIterator[PipelinedRedis]:
    c = PipelinedRedis(port=own_redis.port, timeout_s=0.5, connect_timeout_s=0.5)
    yield c
    await c.aclose()


async def test_concurrent_callers_each_get_their_own_reply(client: PipelinedRedis) -> None:
    replies = await asyncio.gather(*(client.eval(ECHO, 0, f"v{i}") for i in range(2000)))
    assert replies == [f"v{i}".encode() for i in range(2000)]


async def test_a_caller_that_gives_up_does_not_shift_the_others(client: PipelinedRedis) -> None:
    calls = [asyncio.ensure_future(client.eval(ECHO, 0, f"v{i}")) for i in range(50)]
    for i in range(0, 50, 7):
        calls[i].cancel()
    done = await asyncio.gather(*calls, return_exceptions=True)
    for i, reply in enumerate(done):
        if i % 7 == 0:
            assert isinstance(reply, asyncio.CancelledError)
        else:
            assert reply == f"v{i}".encode()
    assert await client.eval(ECHO, 0, "after") == b"after"


async def test_error_replies_raise_redis_py_errors_and_the_connection_goes_on(client: PipelinedRedis) -> None:
    with pytest.raises(NoScriptError):
        await client.evalsha("0" * 40, 0)
    with pytest.raises(ResponseError, match="boom"):
        await client.eval("return redis.error_reply('boom')", 0)
    assert await client.eval(ECHO, 0, "still") == b"still"


async def test_password_and_database_are_applied(own_redis: RedisProcess) -> None:
    admin = aioredis.Redis(port=own_redis.port)
    await admin.config_set("requirepass", "s3cret")
    try:
        url = f"redis://:s3cret@127.0.0.1:{own_redis.port}/5"
        reference = aioredis.Redis.from_url(url)
        client = PipelinedRedis.like(reference, timeout_s=0.5, connect_timeout_s=0.5)
        assert client is not None
        await client.execute(b"SET", "k", "in-db-5")
        assert await reference.get("k") == b"in-db-5"  # the same database as redis-py's
        await client.aclose()
        await reference.aclose()
        wrong = PipelinedRedis(port=own_redis.port, password="wrong", timeout_s=0.5, connect_timeout_s=0.5)
        with pytest.raises(ResponseError):
            await wrong.execute(b"PING")
        await wrong.aclose()
    finally:
        await admin.execute_command("AUTH", "s3cret")
        await admin.config_set("requirepass", "")
        await admin.aclose()


async def test_a_frozen_server_times_out_and_a_resumed_one_serves_again(
    own_redis: RedisProcess, client: PipelinedRedis
) -> None:
    assert await client.eval(ECHO, 0, "before") == b"before"
    own_redis.pause()
    try:
        started = time.monotonic()
        results = await asyncio.gather(*(client.eval(ECHO, 0, str(i)) for i in range(10)), return_exceptions=True)
        waited = time.monotonic() - started
        assert all(isinstance(r, RedisTimeoutError) for r in results), results
        assert waited < 5.0  # the watchdog gives up after about timeout_s, not never
    finally:
        own_redis.resume()
    for _ in range(50):  # bounded: the next call reconnects
        try:
            assert await client.eval(ECHO, 0, "after") == b"after"
            break
        except (RedisTimeoutError, RedisConnectionError):
            await asyncio.sleep(0.1)
    else:
        pytest.fail("the connection never recovered after SIGCONT")


# Keeps Redis busy for ARGV[1] ms, answering nothing meanwhile: a slow Redis, not a frozen one.
SPIN = """
local t = redis.call('TIME')
local stop_at = tonumber(t[1]) * 1000000 + tonumber(t[2]) + tonumber(ARGV[1]) * 1000
repeat t = redis.call('TIME') until tonumber(t[1]) * 1000000 + tonumber(t[2]) >= stop_at
return ARGV[1]
"""


async def test_a_slow_server_that_keeps_answering_is_waited_for(client: PipelinedRedis) -> None:
    # Two commands of 0.35 s each, in two writes (Redis answers a batch read in one go only after running
    # all of it): the second waits 0.7 s, past the 0.5 s timeout, but the first reply arrives at 0.35 s, so
    # Redis is slow, not stuck.
    started = time.monotonic()
    first = asyncio.ensure_future(client.eval(SPIN, 0, "350"))
    await asyncio.sleep(0.02)
    second = asyncio.ensure_future(client.eval(SPIN, 0, "350"))
    assert await asyncio.gather(first, second) == [b"350", b"350"]
    assert time.monotonic() - started >= 0.7
    assert await client.eval(ECHO, 0, "same connection") == b"same connection"


async def test_a_command_silent_past_the_timeout_fails_though_the_server_lives(client: PipelinedRedis) -> None:
    with pytest.raises(RedisTimeoutError):
        await client.eval(SPIN, 0, "800")  # 0.8 s without a byte: as good as frozen for a 0.5 s timeout


async def test_a_killed_server_fails_callers_and_a_restarted_one_serves_again(
    own_redis: RedisProcess, client: PipelinedRedis
) -> None:
    assert await client.eval(ECHO, 0, "before") == b"before"
    own_redis.kill()
    with pytest.raises((RedisConnectionError, RedisTimeoutError)):
        await client.eval(ECHO, 0, "while down")
    own_redis.start()
    assert await client.eval(ECHO, 0, "after") == b"after"


async def test_commands_of_one_tick_reach_redis_in_few_reads(own_redis: RedisProcess, client: PipelinedRedis) -> None:
    observer = aioredis.Redis(port=own_redis.port)
    try:
        await client.eval(ECHO, 0, "connect")
        before = (await observer.info("stats"))["total_reads_processed"]
        assert len(await asyncio.gather(*(client.eval(ECHO, 0, str(i)) for i in range(200)))) == 200
        reads = (await observer.info("stats"))["total_reads_processed"] - before
        # 200 commands from one tick leave in one write; Redis reads them in a handful of socket reads
        # (plus one for the INFO call), where 200 separate connections would need at least 200.
        assert reads <= 10, reads
    finally:
        await observer.aclose()


async def test_callers_share_one_connect_attempt_to_a_server_that_never_answers() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accept, read, never answer (a frozen Redis whose kernel still accepts)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = PipelinedRedis(port=port, password="pw", timeout_s=0.5, connect_timeout_s=0.5)
    try:
        started = time.monotonic()
        results = await asyncio.gather(*(client.execute(b"PING") for _ in range(10)), return_exceptions=True)
        waited = time.monotonic() - started
        assert all(isinstance(r, RedisTimeoutError) for r in results), results
        assert waited < 3.0  # one shared attempt (AUTH hangs 0.5 s), not ten in a row (5 s)
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()


BUSY_100MS = (
    "local t0 = redis.call('TIME') "
    "repeat local t = redis.call('TIME') until (t[1] - t0[1]) * 1000000 + (t[2] - t0[2]) > 100000 "
    "return 1"
)


async def test_a_command_whose_caller_gave_up_before_it_left_is_never_run(client: PipelinedRedis) -> None:
    # Nobody counts a cancelled call as in flight (Tiers.settle): Redis must not run it later.
    key = f"gave-up-{uuid.uuid4().hex[:8]}"
    slow = asyncio.ensure_future(client.eval(BUSY_100MS, 0))
    await asyncio.sleep(0.03)  # the script is running in Redis: the next commands are held behind it
    gave_up = asyncio.ensure_future(client.execute(b"INCR", key))
    await asyncio.sleep(0)
    gave_up.cancel()
    kept = asyncio.ensure_future(client.execute(b"INCR", key))
    assert await slow == 1
    assert await kept == 1
    assert await client.execute(b"GET", key) == b"1"
    with pytest.raises(asyncio.CancelledError):
        await gave_up
