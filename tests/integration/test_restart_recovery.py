"""Issue #11, case 1: a server that (re)starts while, or after, Redis was down must apply the pending cache
repair before it uses Redis for that thread (DESIGN.md §3: "The promises hold across a process restart at
any moment ... and across replicas"). Real redis-server (AOF, appendfsync always), PostgreSQL and server
processes; Redis comes back with its old counter and window, which went stale while the store took writes.
"""

from __future__ import annotations

import asyncio
import pathlib
import uuid
from collections.abc import Iterator

import pytest

from chatmem.v1 import resources_pb2 as r
from devtools import chaos
from devtools.faultkit import (
    append_retrying,
    history,
    seqs_of,
    server_env,
    start_server,
)
from devtools.postgres import PostgresProcess
from devtools.redis import RedisProcess
from devtools.server import ServerProcess
from tests.stack import redis_and_postgres

pytestmark = pytest.mark.integration


@pytest.fixture
def stack() -> Iterator[tuple[RedisProcess, PostgresProcess]]:
    """A Redis with AOF (so a kill -9 loses nothing and it comes back with its old keys) and a PostgreSQL."""
    with redis_and_postgres(appendonly=True) as both:
        yield both


class Servers:
    """The server processes a test started, all stopped (killed) at its end."""

    def __init__(self, cwd: str) -> None:
        self.cwd = cwd
        self.started: list[ServerProcess] = []

    async def start(self, env: dict[str, str]) -> ServerProcess:
        server = await start_server(env, self.cwd)
        self.started.append(server)
        return server

    def close(self) -> None:
        for s in self.started:
            s.kill()


@pytest.fixture
def servers(tmp_path: pathlib.Path) -> Iterator[Servers]:
    s = Servers(str(tmp_path))
    yield s
    s.close()


def ids() -> tuple[str, str]:
    return f"cm{uuid.uuid4().hex[:6]}", f"ws-{uuid.uuid4().hex[:8]}"


async def through_outage(target: str, ws: str, thread: str, contents: list[str]) -> list[tuple[int, int]]:
    """Append each content (retrying until acknowledged); return (seq, durability) of each."""
    out = []
    for c in contents:
        resp = await append_retrying(target, ws, thread, c)
        out.append((resp.seqs[0], resp.durability))
    return out


async def redis_down_then_new_server(
    stack: tuple[RedisProcess, PostgresProcess], servers: Servers, mode: str, **extra: str
) -> tuple[ServerProcess, str, str, list[tuple[int, str]]]:
    """The issue's steps up to the new server: 3 appends through Redis, kill -9 Redis, 3 appends that fall
    back to the store, kill -9 the server, Redis back (AOF), a new server process.

    Returns the new server, the workspace, the thread, and every acknowledged (seq, content).
    """
    redis, pg = stack
    prefix, ws = ids()
    env = server_env(redis_url=redis.url, pg_url=pg.url, prefix=prefix, mode=mode, **extra)
    first = await servers.start(env)
    acked: list[tuple[int, str]] = []
    before = await through_outage(first.target, ws, "T", ["m1", "m2", "m3"])
    if mode == "write_behind":
        assert [d for _, d in before] == [r.DURABILITY_QUEUED] * 3, before
        await chaos.wait_drained(redis.url, prefix, 20)
    acked += [(s, c) for (s, _), c in zip(before, ["m1", "m2", "m3"], strict=True)]
    redis.kill()
    during = await through_outage(first.target, ws, "T", ["m4", "m5", "m6"])
    assert [d for _, d in during] == [r.DURABILITY_PERSISTED] * 3, f"the store must take over: {during}"
    acked += [(s, c) for (s, _), c in zip(during, ["m4", "m5", "m6"], strict=True)]
    first.kill()
    redis.start()
    second = await servers.start(env)
    return second, ws, "T", acked


def served(got: object) -> str:
    return (
        f"{[(m.seq, m.content) for m in got.messages]} "  # type: ignore[attr-defined]
        f"tier={r.Tier.Name(got.serving.tier)} degraded={got.serving.degraded}"  # type: ignore[attr-defined]
    )


async def test_new_server_after_redis_outage_appends_past_every_acked_seq_and_reads_all(
    stack: tuple[RedisProcess, PostgresProcess], servers: Servers
) -> None:
    """write_behind: the new process's first request for T is an append, then a read."""
    server, ws, thread, acked = await redis_down_then_new_server(stack, servers, "write_behind")
    seqs = [s for s, _ in acked]
    assert seqs == sorted(set(seqs)), f"acknowledged seqs not increasing: {acked}"
    problems = []
    resp = await append_retrying(server.target, ws, thread, "m7")
    if resp.seqs[0] <= max(seqs):
        problems.append(f"new append got seq {resp.seqs[0]} after {seqs} were acknowledged")
    acked.append((resp.seqs[0], "m7"))
    got = await history(server.target, ws, thread)
    if [(m.seq, m.content) for m in got.messages] != sorted(acked):
        problems.append(f"history after restart: {served(got)}; acknowledged {acked}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("mode", ["write_behind", "write_through"])
async def test_new_server_after_redis_outage_first_read_is_not_the_stale_window(
    stack: tuple[RedisProcess, PostgresProcess], servers: Servers, mode: str
) -> None:
    """The new process's first request for T is a read: it must not serve 1,2,3 (Redis's stale window)."""
    server, ws, thread, acked = await redis_down_then_new_server(stack, servers, mode)
    got = await history(server.target, ws, thread)
    assert [(m.seq, m.content) for m in got.messages] == acked, (
        f"first read after restart served {served(got)}; acknowledged {acked}"
    )
    resp = await append_retrying(server.target, ws, thread, "m7")
    assert resp.seqs[0] > max(s for s, _ in acked), f"new append got seq {resp.seqs[0]} after {acked}"
    acked.append((resp.seqs[0], "m7"))
    got = await history(server.target, ws, thread)
    assert [(m.seq, m.content) for m in got.messages] == acked, f"history: {served(got)}; acknowledged {acked}"


async def test_small_unflushed_gap_no_seq_twice_and_nothing_queued_lost(
    stack: tuple[RedisProcess, PostgresProcess], servers: Servers
) -> None:
    """OUTBOX__MAX_UNFLUSHED_PER_THREAD=10: the store numbers its fallback writes past a gap of 10; the new
    server's appends through Redis must not reuse those seqs, and every QUEUED ack reaches PostgreSQL."""
    redis, pg = stack
    server, ws, thread, acked = await redis_down_then_new_server(
        stack, servers, "write_behind", OUTBOX__MAX_UNFLUSHED_PER_THREAD="10"
    )
    recorder = chaos.Recorder()
    for seq, content in acked:
        recorder.acks.append(chaos.Ack(thread, content, seq, 0.0, 0.0, r.DURABILITY_PERSISTED))
    queued = 0
    t0 = 1.0
    for i in range(25):  # more than the gap, so a Redis counter that resumed at 4 would run into 14..16
        resp = await append_retrying(server.target, ws, thread, f"n{i}")
        queued += resp.durability == r.DURABILITY_QUEUED
        recorder.acks.append(chaos.Ack(thread, f"n{i}", resp.seqs[0], t0 + 2 * i, t0 + 2 * i + 1, resp.durability))
    assert queued, "the new server should queue through Redis again"
    prefix = server.env["REDIS__KEY_PREFIX"]
    await chaos.wait_drained(redis.url, prefix, 30)
    await asyncio.sleep(0.3)
    stored = await chaos.pg_histories(pg.url, ws)
    handed = [a.seq for a in recorder.acks]
    twice = sorted({s for s in handed if handed.count(s) > 1})
    problems = []
    if twice:
        problems.append(f"seqs handed out twice: {twice}; acks {[(a.seq, a.content) for a in recorder.acks]}")
    report = chaos.check(recorder, stored)
    if not report.ok:
        found = report.missing + report.duplicates + report.seq_mismatches + report.order_violations
        problems += [f"PostgreSQL vs acks: {report.summary()}", *found[:20]]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("outage", ["pause", "kill"])
async def test_replica_that_never_saw_the_outage_repairs_before_using_redis(
    stack: tuple[RedisProcess, PostgresProcess], servers: Servers, outage: str
) -> None:
    """Two replicas A and B on one Redis and one PostgreSQL. B stays idle; Redis is frozen (or killed); A
    appends to T through the store; Redis returns; the first request for T goes to B."""
    redis, pg = stack
    prefix, ws = ids()
    env = server_env(redis_url=redis.url, pg_url=pg.url, prefix=prefix)
    a = await servers.start(env)
    b = await servers.start(env)
    acked = [
        (s, c)
        for (s, _), c in zip(
            await through_outage(a.target, ws, "T", ["a1", "a2", "a3"]), ["a1", "a2", "a3"], strict=True
        )
    ]
    await chaos.wait_drained(redis.url, prefix, 20)
    if outage == "pause":
        redis.pause()
    else:
        redis.kill()
    try:
        during = await through_outage(a.target, ws, "T", ["a4", "a5", "a6"])
    finally:
        if outage == "pause":
            redis.resume()
        else:
            redis.start()
    assert [d for _, d in during] == [r.DURABILITY_PERSISTED] * 3, f"A must have fallen back to the store: {during}"
    acked += [(s, c) for (s, _), c in zip(during, ["a4", "a5", "a6"], strict=True)]
    resp = await append_retrying(b.target, ws, "T", "b1")
    assert resp.seqs[0] > max(s for s, _ in acked), (
        f"B's append got seq {resp.seqs[0]} (durability {r.Durability.Name(resp.durability)}) "
        f"after A's {acked} were acknowledged"
    )
    acked.append((resp.seqs[0], "b1"))
    got = await history(b.target, ws, "T")
    served = [(m.seq, m.content) for m in got.messages]
    assert served == acked, (
        f"B's history: {served} tier={r.Tier.Name(got.serving.tier)} degraded={got.serving.degraded}; "
        f"acknowledged {acked}"
    )
    assert seqs_of(got) == sorted(seqs_of(got))


async def test_server_started_while_redis_is_down_serves_from_the_store_then_uses_redis(
    stack: tuple[RedisProcess, PostgresProcess], servers: Servers
) -> None:
    """Redis down -> reads and writes go to the store (DESIGN.md §3), also for a process that starts then.

    The first server writes 3 messages through Redis and is killed with Redis; a new server starts while
    Redis is still down and must serve; once Redis returns its window must not be stale either.
    """
    redis, pg = stack
    prefix, ws = ids()
    env = server_env(redis_url=redis.url, pg_url=pg.url, prefix=prefix)
    first = await servers.start(env)
    acked = [
        (s, c)
        for (s, _), c in zip(
            await through_outage(first.target, ws, "T", ["m1", "m2", "m3"]), ["m1", "m2", "m3"], strict=True
        )
    ]
    await chaos.wait_drained(redis.url, prefix, 20)
    first.kill()
    redis.kill()
    server = ServerProcess(env, servers.cwd)
    server.start()
    servers.started.append(server)
    try:
        await chaos.wait_serving(server.target, 15)
    except Exception as exc:  # noqa: BLE001 - any failure to serve is the finding
        lines = [line for line in server.log().splitlines() if line.strip()]
        raise AssertionError(
            f"a server started while Redis is down does not serve: {exc!r}; log: {lines[-3:]}"
        ) from None
    during = await through_outage(server.target, ws, "T", ["m4", "m5"])
    assert [d for _, d in during] == [r.DURABILITY_PERSISTED] * 2, during
    acked += [(s, c) for (s, _), c in zip(during, ["m4", "m5"], strict=True)]
    redis.start()
    await asyncio.sleep(1.0)  # a few probe intervals: the server notices Redis is back
    resp = await append_retrying(server.target, ws, "T", "m6")
    assert resp.seqs[0] > max(s for s, _ in acked), f"append after Redis returned got {resp.seqs[0]} after {acked}"
    acked.append((resp.seqs[0], "m6"))
    got = await history(server.target, ws, "T")
    assert [(m.seq, m.content) for m in got.messages] == acked, f"history: {served(got)}; acknowledged {acked}"
