"""Overload is not an outage (issue 16, target 5), on real processes: a Redis that answers slowly keeps the
breaker closed, one that stays silent opens it, and a server short of CPU refuses what it cannot answer
in time with RESOURCE_EXHAUSTED instead of letting deadlines pass."""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import grpc
import pytest

from chatmem.v1 import resources_pb2 as r
from chatmem.v1 import thread_memory_service_pb2 as pb
from chatmem.v1 import thread_memory_service_pb2_grpc as pb_grpc
from devtools import chaos
from devtools.postgres import PostgresProcess
from devtools.redis import RedisProcess
from devtools.server import ServerProcess
from tests.stack import redis_and_postgres

pytestmark = pytest.mark.integration

THREADS = [f"t{i}" for i in range(6)]
CLIENTS = 6
SOCKET_TIMEOUT_S = 0.5
DEAD_AFTER_S = 1.5
# Longer than a request's socket timeout, well short of the silence that declares Redis down.
SLOW_STALL_S = 0.8
DEAD_STALL_S = 3.0
LONG_READ = 1000


@dataclass
class Rig:
    """A write_behind server over its own Redis and PostgreSQL, with the dead-Redis threshold set."""

    redis: RedisProcess
    pg: PostgresProcess
    server: ServerProcess
    prefix: str
    workspace: str

    async def load(self, seconds: float, stalls: list[tuple[float, float]]) -> tuple[chaos.Recorder, Counter[str]]:
        """Append and read from CLIENTS clients each for ``seconds``, SIGSTOPping Redis ``(at_s, for_s)`` meanwhile.

        Returns the appends' recorder and the reads' outcomes ("cache", "degraded", or a status name).
        """
        recorder = chaos.Recorder()
        reads: Counter[str] = Counter()
        stop = asyncio.Event()
        appenders = [
            asyncio.ensure_future(
                chaos.appender(self.server.target, self.workspace, c, THREADS, recorder, stop, deadline_s=5.0)
            )
            for c in range(CLIENTS)
        ]
        readers = [asyncio.ensure_future(self._reader(c, reads, stop)) for c in range(CLIENTS)]
        started = time.monotonic()
        for at_s, for_s in stalls:
            await asyncio.sleep(max(0.0, started + at_s - time.monotonic()))
            await asyncio.to_thread(self._stall, for_s)
        await asyncio.sleep(max(0.0, started + seconds - time.monotonic()))
        stop.set()
        await asyncio.wait_for(asyncio.gather(*appenders, *readers), 120)
        return recorder, reads

    def _stall(self, for_s: float) -> None:
        self.redis.pause()
        try:
            time.sleep(for_s)
        finally:
            self.redis.resume()

    async def _reader(self, client: int, outcomes: Counter[str], stop: asyncio.Event) -> None:
        async with grpc.aio.insecure_channel(self.server.target) as channel:
            stub = pb_grpc.ThreadMemoryServiceStub(channel)
            for i in range(100_000):
                if stop.is_set():
                    return
                request = pb.GetHistoryRequest(
                    workspace_id=self.workspace, thread_id=THREADS[(client + i) % 6], limit=20
                )
                try:
                    response = await stub.GetHistory(request, timeout=5.0)
                except grpc.aio.AioRpcError as exc:
                    outcomes[exc.code().name] += 1
                    await asyncio.sleep(0.01)
                    continue
                outcomes["degraded" if response.serving.degraded else r.Tier.Name(response.serving.tier)] += 1
                await asyncio.sleep(0.005)


@pytest.fixture
def processes() -> Iterator[tuple[RedisProcess, PostgresProcess]]:
    with redis_and_postgres() as both:
        yield both


@pytest.fixture
async def rig(processes: tuple[RedisProcess, PostgresProcess], tmp_path: pathlib.Path) -> AsyncIterator[Rig]:
    redis, pg = processes
    prefix = f"cm{uuid.uuid4().hex[:6]}"
    env = {
        "DATABASE__URL": pg.url,
        "REDIS__URL": redis.url,
        "REDIS__KEY_PREFIX": prefix,
        "REDIS__SOCKET_TIMEOUT_S": str(SOCKET_TIMEOUT_S),
        "REDIS__DEAD_AFTER_S": str(DEAD_AFTER_S),
        "REDIS__PROBE_INTERVAL_S": "0.2",
        "MEMORY__WRITE_MODE": "write_behind",
        "OUTBOX__BLOCK_MS": "50",
        "LOG_LEVEL": "WARNING",
    }
    server = ServerProcess(env, str(tmp_path))
    server.start()
    await chaos.wait_serving(server.target)
    yield Rig(redis, pg, server, prefix, f"ws-{uuid.uuid4().hex[:8]}")
    if server.proc is not None:
        assert server.stop() == 0, server.log()[-3000:]


async def test_a_redis_slower_than_the_socket_timeout_keeps_the_breaker_closed(rig: Rig) -> None:
    recorder, reads = await rig.load(5.0, [(1.0, SLOW_STALL_S), (3.0, SLOW_STALL_S)])
    report = chaos.check(recorder, await _drained_histories(rig))
    assert report.ok, report.summary()
    assert report.acked > 50, "the load must have acknowledged appends to check"
    # Every append went through Redis (QUEUED), none around it to the store (PERSISTED); no read was degraded.
    assert {a.durability for a in recorder.acks} == {r.DURABILITY_QUEUED}, rig.server.log()[-3000:]
    assert not recorder.errors, recorder.errors
    # No read was degraded or failed (a thread's first reads, before its first append, miss the cache).
    assert set(reads) <= {"TIER_CACHE", "TIER_STORE"} and reads["TIER_CACHE"] > 10 * reads["TIER_STORE"], reads
    assert "degraded: redis" not in rig.server.log(), rig.server.log()[-2000:]
    assert recorder.slowest_call_s >= SOCKET_TIMEOUT_S, "the stalls must have held calls past the socket timeout"


async def test_a_redis_silent_past_the_threshold_opens_the_breaker_and_recovers(rig: Rig) -> None:
    recorder, reads = await rig.load(6.0, [(1.0, DEAD_STALL_S)])
    report = chaos.check(recorder, await _drained_histories(rig))
    assert report.ok, report.summary()
    log = rig.server.log()
    assert "degraded: redis is unavailable" in log and "recovered: redis" in log, log[-2000:]
    # Around the freeze the store took the appends; before and after it, the outbox.
    assert {a.durability for a in recorder.acks} == {r.DURABILITY_QUEUED, r.DURABILITY_PERSISTED}
    assert reads["degraded"] > 0 and reads["TIER_CACHE"] > 0, reads
    async with grpc.aio.insecure_channel(rig.server.target) as channel:
        stub = pb_grpc.ThreadMemoryServiceStub(channel)
        request = pb.GetHistoryRequest(workspace_id=rig.workspace, thread_id=THREADS[0], limit=20)
        tiers = []
        for _ in range(50):  # the repair dropped the window: the first read refills it
            response = await stub.GetHistory(request, timeout=5.0)
            tiers.append(("degraded " if response.serving.degraded else "") + r.Tier.Name(response.serving.tier))
            if tiers[-1] == "TIER_CACHE":
                break
            await asyncio.sleep(0.05)
        assert tiers[-1] == "TIER_CACHE", tiers


async def _drained_histories(rig: Rig) -> dict[str, list[tuple[int, str]]]:
    await chaos.wait_drained(rig.redis.url, rig.prefix, 60)
    return await chaos.pg_histories(rig.pg.url, rig.workspace)


# --- shedding ----------------------------------------------------------------------------------------


class Starver:
    """Keeps a process short of CPU: SIGSTOP for ``stopped_s`` out of every ``period_s``, until stopped."""

    def __init__(self, pid: int, stopped_s: float, period_s: float, max_s: float) -> None:
        self._pid, self._stopped_s, self._period_s, self._max_s = pid, stopped_s, period_s, max_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Starver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        until = time.monotonic() + self._max_s  # bounded even if the test forgets to stop it
        while not self._stop.is_set() and time.monotonic() < until:
            os.kill(self._pid, signal.SIGSTOP)
            try:
                time.sleep(self._stopped_s)
            finally:
                os.kill(self._pid, signal.SIGCONT)
            time.sleep(self._period_s - self._stopped_s)


async def _hammer(
    target: str, workspace: str, clients: int, seconds: float, deadline_s: float, limit: int
) -> Counter[str]:
    outcomes: Counter[str] = Counter()
    until = time.monotonic() + seconds
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.ThreadMemoryServiceStub(channel)
        request = pb.GetHistoryRequest(workspace_id=workspace, thread_id="hot", limit=limit)

        async def client() -> None:
            for _ in range(10_000):
                if time.monotonic() >= until:
                    return
                try:
                    await stub.GetHistory(request, timeout=deadline_s)
                except grpc.aio.AioRpcError as exc:
                    outcomes[exc.code().name] += 1
                    await asyncio.sleep(0.05)  # a refused client backs off, as RetryInfo asks
                else:
                    outcomes["OK"] += 1

        await asyncio.gather(*(client() for _ in range(clients)))
    return outcomes


async def _starved_run(tmp_path: pathlib.Path, shed_margin: str) -> Counter[str]:
    server = ServerProcess(
        {
            "DATABASE__SQLITE_PATH": str(tmp_path / "chatmem.db"),
            "QUOTA__SHED_MARGIN": shed_margin,
            "LOG_LEVEL": "WARNING",
        },
        str(tmp_path),
    )
    server.start()
    try:
        await chaos.wait_serving(server.target)
        workspace = f"ws-{uuid.uuid4().hex[:8]}"
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = pb_grpc.ThreadMemoryServiceStub(channel)
            for first in range(0, LONG_READ, 100):  # a long read: the server's work comes after admission
                messages = [r.MessageInput(role=r.ROLE_USER, content=f"m{first + i} " + "x" * 500) for i in range(100)]
                await stub.AppendMessages(
                    pb.AppendMessagesRequest(workspace_id=workspace, thread_id="hot", messages=messages), timeout=10
                )
        await _hammer(server.target, workspace, 16, 1.0, 5.0, LONG_READ)  # the server learns what a call costs
        assert server.proc is not None
        with Starver(server.proc.pid, stopped_s=0.05, period_s=0.1, max_s=30):
            return await _hammer(server.target, workspace, 64, 4.0, 1.0, LONG_READ)
    finally:
        assert server.stop() == 0, server.log()[-3000:]


async def test_a_server_short_of_cpu_refuses_calls_it_cannot_answer_in_time(tmp_path: pathlib.Path) -> None:
    outcomes = await _starved_run(tmp_path, "1.5")
    print(f"starved server, shedding on: {dict(outcomes)}")
    assert outcomes["RESOURCE_EXHAUSTED"] > 0, outcomes
    assert outcomes["OK"] > 0, outcomes
    assert outcomes["DEADLINE_EXCEEDED"] < outcomes["RESOURCE_EXHAUSTED"], outcomes
