"""WatchThread on real servers: live, in order, resumable, across replicas and restarts, degraded, capped."""

from __future__ import annotations

import asyncio
import pathlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest

from chatmem import MemoryClient, NotFoundError, SyncMemoryClient
from chatmem.v1 import resources_pb2 as r
from chatmem.v1 import thread_memory_service_pb2 as pb
from chatmem.v1 import thread_memory_service_pb2_grpc as pb_grpc
from devtools import chaos
from devtools.faultkit import append_retrying, server_env, start_server
from devtools.postgres import PostgresProcess
from devtools.redis import RedisProcess
from devtools.server import ServerProcess
from server.config import WatchSettings
from tests.conftest import Harness, exchange, make_settings, start_harness
from tests.integration.conftest import backend_settings

pytestmark = pytest.mark.integration

BACKENDS = ["sqlite", "postgres+redis", "postgres+redis:wt"]


class Watching:
    """A raw WatchThread call read in the background into ``responses``."""

    def __init__(self, stub: pb_grpc.ThreadMemoryServiceStub, ws: str, thread: str, after_seq: int = 0) -> None:
        self.call = stub.WatchThread(pb.WatchThreadRequest(workspace_id=ws, thread_id=thread, after_seq=after_seq))
        self.responses: list[pb.WatchThreadResponse] = []
        self.error: grpc.aio.AioRpcError | None = None
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            async for response in self.call:
                self.responses.append(response)
        except grpc.aio.AioRpcError as exc:
            self.error = exc

    @property
    def seqs(self) -> list[int]:
        return [m.seq for resp in self.responses for m in resp.messages]

    async def until(self, cond: Any, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not cond():
            assert time.monotonic() < deadline, f"timed out; seqs {self.seqs}, error {self.error}"
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        self.call.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def append(h: Harness, thread: str, i: int) -> list[int]:
    req = pb.AppendMessagesRequest(workspace_id=h.ws, thread_id=thread, messages=exchange(i))
    return list((await h.threads.AppendMessages(req)).seqs)


@pytest.fixture(params=BACKENDS)
async def api(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> AsyncIterator[Harness]:
    h = await start_harness(backend_settings(request, request.param, tmp_path))
    yield h
    await h.close()


async def test_a_watch_sends_the_history_after_a_seq_then_each_append_live(api: Harness) -> None:
    await append(api, "t", 0)
    await append(api, "t", 1)
    w = Watching(api.threads, api.ws, "t", after_seq=1)
    await w.until(lambda: w.seqs == [2, 3, 4])
    for i in range(2, 6):
        await append(api, "t", i)
    await w.until(lambda: w.seqs == list(range(2, 13)))
    assert not any(resp.serving.degraded for resp in w.responses)
    # Resumed from the last seq received: nothing again, then only what is new.
    resumed = Watching(api.threads, api.ws, "t", after_seq=12)
    await append(api, "t", 6)
    await resumed.until(lambda: resumed.seqs == [13, 14])
    await w.until(lambda: w.seqs == list(range(2, 15)))
    await asyncio.sleep(0.2)
    assert w.seqs == list(range(2, 15)) and resumed.seqs == [13, 14]
    await w.close()
    await resumed.close()


async def test_a_watch_reads_past_the_window_from_the_store(api: Harness) -> None:
    n = api.app.settings.memory.max_thread_messages
    for i in range(n):  # 2n messages: the cached window holds only the last n
        await append(api, "long", i)
    w = Watching(api.threads, api.ws, "long", after_seq=3)
    await w.until(lambda: w.seqs == list(range(4, 2 * n + 1)))
    await w.close()


async def test_a_thread_that_does_not_exist_yet_starts_with_its_first_append(api: Harness) -> None:
    w = Watching(api.threads, api.ws, "later")
    await asyncio.sleep(0.2)
    assert w.seqs == [] and w.error is None
    await append(api, "later", 0)
    await w.until(lambda: w.seqs == [1, 2])
    await w.close()


async def test_deleting_a_watched_thread_ends_the_watch_with_not_found(api: Harness) -> None:
    await append(api, "doomed", 0)
    w = Watching(api.threads, api.ws, "doomed")
    await w.until(lambda: w.seqs == [1, 2])
    await api.threads.DeleteThread(pb.DeleteThreadRequest(workspace_id=api.ws, thread_id="doomed"))
    await asyncio.wait_for(w.task, 10)
    assert w.error is not None and w.error.code() == grpc.StatusCode.NOT_FOUND


async def test_a_watch_survives_truncation_and_never_sends_a_compaction_summary(api: Harness) -> None:
    for i in range(3):
        await append(api, "t", i)  # seqs 1..6
    w = Watching(api.threads, api.ws, "t")
    await w.until(lambda: w.seqs == [1, 2, 3, 4, 5, 6])
    await api.threads.TruncateThread(pb.TruncateThreadRequest(workspace_id=api.ws, thread_id="t", after_seq=4))
    await append(api, "t", 3)  # seqs are never reused: 7, 8
    await w.until(lambda: w.seqs == [1, 2, 3, 4, 5, 6, 7, 8])
    summary = r.MessageInput(role=r.ROLE_SYSTEM, content="the story so far")
    compact = pb.CompactThreadRequest(workspace_id=api.ws, thread_id="t", through_seq=7, summary=summary)
    await api.threads.CompactThread(compact)
    await append(api, "t", 4)
    await w.until(lambda: w.seqs[-2:] == [9, 10])
    # A new watch from the start gets the messages themselves, compacted ones included, never the summary.
    fresh = Watching(api.threads, api.ws, "t")
    await fresh.until(lambda: fresh.seqs[-1:] == [10])
    assert fresh.seqs == [1, 2, 3, 4, 7, 8, 9, 10]
    assert not any(m.summarizes_through_seq for resp in fresh.responses for m in resp.messages)
    assert w.error is None and fresh.error is None
    await w.close()
    await fresh.close()


async def test_watches_beyond_the_cap_are_refused_with_resource_exhausted(tmp_path: pathlib.Path) -> None:
    settings = make_settings(sqlite_path=str(tmp_path / "cap.db"))
    settings.limits.max_watchers_per_workspace = 2
    h = await start_harness(settings)
    try:
        held = [Watching(h.threads, h.ws, f"t{i}") for i in range(2)]
        await asyncio.sleep(0.2)
        refused = Watching(h.threads, h.ws, "t9")
        await asyncio.wait_for(refused.task, 5)
        assert refused.error is not None and refused.error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        other = Watching(h.threads, f"{h.ws}-other", "t0")  # another workspace has its own cap
        await asyncio.sleep(0.2)
        assert other.error is None
        await held[0].close()
        await asyncio.sleep(0.1)
        again = Watching(h.threads, h.ws, "t9")
        await append(h, "t9", 0)
        await again.until(lambda: again.seqs == [1, 2])
        for w in (*held, other, again):
            await w.close()
    finally:
        await h.close()


async def test_watchers_that_never_read_do_not_slow_appends(tmp_path: pathlib.Path) -> None:
    h = await start_harness(make_settings(sqlite_path=str(tmp_path / "slow.db")))
    big = [r.MessageInput(role=r.ROLE_USER, content="x" * 100_000)]

    async def appends(thread: str, n: int) -> float:
        started = time.perf_counter()
        for _ in range(n):
            await h.threads.AppendMessages(pb.AppendMessagesRequest(workspace_id=h.ws, thread_id=thread, messages=big))
        return time.perf_counter() - started

    try:
        baseline = await appends("free", 50)
        # Raw calls that are never read. Once their flow-control windows and socket buffers are full (15 MB
        # each here), their sends block: each holds one batch and does nothing more, and appends go on.
        request = pb.WatchThreadRequest(workspace_id=h.ws, thread_id="watched")
        stuck = [h.threads.WatchThread(request) for _ in range(5)]
        await asyncio.sleep(0.2)
        await appends("watched", 150)
        watched = await appends("watched", 50)
        assert watched < 3 * baseline + 0.5, (watched, baseline)
        for call in stuck:
            call.cancel()
    finally:
        await h.close()


async def test_while_redis_is_down_watchers_poll_the_store_and_say_degraded(
    tmp_path: pathlib.Path, pg_proc: PostgresProcess, own_redis: RedisProcess
) -> None:
    settings = make_settings(database_url=pg_proc.url, redis_url=own_redis.url)
    settings.watch = WatchSettings(poll_interval_s=0.2, recheck_interval_s=1.0)
    h = await start_harness(settings)
    try:
        await append(h, "t", 0)
        w = Watching(h.threads, h.ws, "t")
        await w.until(lambda: w.seqs == [1, 2])
        own_redis.pause()
        try:
            # Written to the store around Redis (seqs skip the fallback gap), read by polling the store.
            await append(h, "t", 1)
            await w.until(lambda: len(w.seqs) == 4)
            await w.until(lambda: h.app.relay is not None and not h.app.relay.live, 10)
            await append(h, "t", 2)
            await w.until(lambda: len(w.seqs) == 6)
            assert w.responses[-1].serving.degraded
        finally:
            own_redis.resume()
        await w.until(lambda: h.app.relay is not None and h.app.relay.live, 10)
        await asyncio.sleep(1.5)  # the breaker's probe closes it again
        n = len(w.seqs)
        await append(h, "t", 3)
        await w.until(lambda: len(w.seqs) == n + 2)
        assert w.seqs == sorted(set(w.seqs)), w.seqs
        assert not w.responses[-1].serving.degraded
        await w.close()
    finally:
        await h.close()


async def test_the_clients_watch_yields_messages_and_ends_at_its_timeout_or_with_not_found(
    tmp_path: pathlib.Path,
) -> None:
    h = await start_harness(make_settings(sqlite_path=str(tmp_path / "client.db")))
    target = f"127.0.0.1:{h.app.port}"
    try:
        await append(h, "t", 0)

        def sync_watch() -> list[int]:
            with SyncMemoryClient.connect(target, workspace_id=h.ws) as client:
                return [m.seq for m in client.watch("t", timeout=1.0)]

        assert await asyncio.to_thread(sync_watch) == [1, 2]
        async with MemoryClient.connect(target, workspace_id=h.ws) as client:
            seen: list[int] = []

            async def follow() -> None:
                async for m in client.watch("t", after_seq=1):
                    seen.append(m.seq)
                    if m.seq == 4:
                        await client.delete_thread("t")

            following = asyncio.ensure_future(follow())
            await append(h, "t", 1)
            with pytest.raises(NotFoundError):
                await asyncio.wait_for(following, 10)
            assert seen == [2, 3, 4]
    finally:
        await h.close()


# --- real server processes -------------------------------------------------------------------------


@pytest.fixture
def processes(tmp_path: pathlib.Path) -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for s in started:
        s.kill()


@pytest.mark.parametrize("mode", ["write_behind", "write_through", "write_behind-cluster"])
async def test_a_watcher_on_replica_a_sees_appends_made_through_replica_b(
    request: pytest.FixtureRequest,
    tmp_path: pathlib.Path,
    pg_proc: PostgresProcess,
    processes: list[ServerProcess],
    mode: str,
) -> None:
    mode, _, cluster = mode.partition("-")
    # On Redis Cluster a classic PUBLISH on any node reaches the subscribers of every node.
    redis_url = request.getfixturevalue("redis_cluster" if cluster else "redis_proc").url
    prefix = f"cm{uuid.uuid4().hex[:6]}"
    env = server_env(redis_url=redis_url, pg_url=pg_proc.url, prefix=prefix, mode=mode, cluster=bool(cluster))
    env["WATCH__RECHECK_INTERVAL_S"] = "30"  # the notice must do it, not the safety re-read
    for _ in range(2):
        processes.append(await start_server(env, str(tmp_path)))
    a, b = processes
    ws = f"ws-{uuid.uuid4().hex[:8]}"
    async with grpc.aio.insecure_channel(a.target) as channel:
        w = Watching(pb_grpc.ThreadMemoryServiceStub(channel), ws, "shared")
        await asyncio.sleep(0.3)
        for i in range(1, 11):
            started = time.perf_counter()
            await append_retrying(b.target, ws, "shared", f"m{i}")
            await w.until(lambda i=i: w.seqs[-1:] == [i], 5)  # type: ignore[misc]
            assert time.perf_counter() - started < 2.0
        assert w.seqs == list(range(1, 11))
        await w.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgres+redis"])
async def test_a_client_watch_resumes_after_server_restarts_with_nothing_missed_or_repeated(
    request: pytest.FixtureRequest, tmp_path: pathlib.Path, processes: list[ServerProcess], backend: str
) -> None:
    if backend == "sqlite":
        env = {"DATABASE__SQLITE_PATH": str(tmp_path / "restart.db"), "LOG_LEVEL": "WARNING"}
    else:
        pg: PostgresProcess = request.getfixturevalue("pg_proc")
        redis: RedisProcess = request.getfixturevalue("redis_proc")
        env = server_env(redis_url=redis.url, pg_url=pg.url, prefix=f"cm{uuid.uuid4().hex[:6]}")
    server = await start_server(env, str(tmp_path))
    processes.append(server)
    ws = f"ws-{uuid.uuid4().hex[:8]}"
    got: list[int] = []
    client = await MemoryClient.connect(server.target, workspace_id=ws)

    async def collect() -> None:
        async for m in client.watch("t"):
            got.append(m.seq)

    watching = asyncio.ensure_future(collect())
    n = 0

    async def appended(k: int) -> None:
        nonlocal n
        for _ in range(k):
            n += 1
            await append_retrying(server.target, ws, "t", f"m{n}")
        deadline = time.monotonic() + 15
        while len(got) < n:
            assert time.monotonic() < deadline and not watching.done(), got
            await asyncio.sleep(0.02)

    try:
        await appended(5)
        server.kill()  # SIGKILL: the stream breaks with UNAVAILABLE
        server.start()
        await chaos.wait_serving(server.target, 30)
        await appended(5)
        server.stop()  # SIGTERM: open watches end with UNAVAILABLE at once
        server.start()
        await chaos.wait_serving(server.target, 30)
        await appended(5)
        assert got == list(range(1, 16)), got
    finally:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
        await client.close()
