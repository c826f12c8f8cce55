"""The server as a real process: the embedded default, the migrate subcommand, and graceful shutdown on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import subprocess
import sys
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from chatmem.v1 import thread_memory_service_pb2 as pb
from chatmem.v1 import thread_memory_service_pb2_grpc as pb_grpc
from devtools.ports import free_port
from devtools.postgres import PostgresProcess
from server.storage.models import ThreadKey
from server.storage.sql.sqlite.store import SqliteStore
from tests.conftest import exchange, msg

pytestmark = pytest.mark.integration

ROOT = pathlib.Path(__file__).resolve().parents[2]


def server_env(tmp_path: pathlib.Path, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS__", "DATABASE__", "GRPC__", "MEMORY__"))}
    env.update(GRPC__ADDRESS=f"127.0.0.1:{port}", GRPC__SHUTDOWN_GRACE_S="5", **extra)
    return env


@pytest.fixture
def embedded(tmp_path: pathlib.Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """`chatmem-server` with no store configured, run in an empty folder: the embedded SQLite default."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "server"],
        cwd=tmp_path,
        env={**server_env(tmp_path, port), "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    yield proc, port
    if proc.poll() is None:
        proc.kill()
        proc.wait()


async def wait_serving(port: int) -> grpc.aio.Channel:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    health = health_pb2_grpc.HealthStub(channel)
    # wait_for_ready rides the channel's own reconnects, so a slow start is not mistaken for a failure.
    resp = await health.Check(health_pb2.HealthCheckRequest(), timeout=30, wait_for_ready=True)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
    return channel


async def test_embedded_default_serves_health_reflection_and_history(
    embedded: tuple[subprocess.Popen[str], int], tmp_path: pathlib.Path
) -> None:
    proc, port = embedded
    channel = await wait_serving(port)
    assert children_of(proc.pid) == [], "GRPC__WORKERS=auto on SQLite is the one process"
    stub = pb_grpc.ThreadMemoryServiceStub(channel)
    await stub.AppendMessages(pb.AppendMessagesRequest(thread_id="t", messages=exchange(1)))
    got = await stub.GetHistory(pb.GetHistoryRequest(thread_id="t"))
    assert [m.content for m in got.messages] == ["question 1", "answer 1"]
    assert (tmp_path / "chatmem.db").exists()
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def ask() -> reflection_pb2.ServerReflectionResponse:
        async for resp in refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])):
            return resp
        raise AssertionError("no reflection answer")

    names = {s.name for s in (await ask()).list_services_response.service}
    assert {"chatmem.v1.ThreadMemoryService", "chatmem.v1.PreferencesService", "grpc.health.v1.Health"} <= names
    for service in ("", "chatmem.v1.ThreadMemoryService", "chatmem.v1.PreferencesService"):
        resp = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    await channel.close()


async def test_sigterm_drains_in_flight_rpcs_then_exits_cleanly(
    embedded: tuple[subprocess.Popen[str], int], tmp_path: pathlib.Path
) -> None:
    proc, port = embedded
    channel = await wait_serving(port)
    stub = pb_grpc.ThreadMemoryServiceStub(channel)
    watcher = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
    first = await watcher.read()
    assert first.status == health_pb2.HealthCheckResponse.SERVING

    async def client(c: int) -> list[int]:
        acked = []
        for i in range(200):
            try:
                resp = await stub.AppendMessages(
                    pb.AppendMessagesRequest(thread_id=f"c{c}", messages=exchange(i)), timeout=5
                )
            except grpc.aio.AioRpcError as exc:
                # Calls that reach the server after the stop began are refused (or, on a loaded machine,
                # outlast their deadline); the store check below allows that one exchange per client.
                assert exc.code() in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.CANCELLED,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                ), exc
                break
            acked += list(resp.seqs)
        return acked

    for start in range(0, 3000, 100):
        await stub.AppendMessages(
            pb.AppendMessagesRequest(thread_id="long", messages=[msg(f"m{i}") for i in range(start, start + 100)])
        )
    stream = stub.StreamHistory(pb.StreamHistoryRequest(thread_id="long", chunk_size=50))
    first_chunk = await stream.read()

    async def slow_reader() -> int:
        n = len(first_chunk.messages)
        for _ in range(1000):
            chunk = await stream.read()
            if chunk is grpc.aio.EOF:
                break
            n += len(chunk.messages)
            await asyncio.sleep(0.02)  # a slow consumer keeps the RPC in flight across the stop
        return n

    reader = asyncio.ensure_future(slow_reader())
    clients = [asyncio.ensure_future(client(c)) for c in range(4)]
    await asyncio.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    status = await asyncio.wait_for(watcher.read(), 5)
    assert status.status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert await reader == 3000, "an RPC in flight at SIGTERM must run to completion"
    acked = await asyncio.gather(*clients)
    assert proc.wait(15) == 0
    output = proc.stdout.read() if proc.stdout else ""
    assert "chatmem stopped" in output
    await channel.close()
    # Everything acknowledged before the stop is in the store, exactly once.
    store = SqliteStore(str(tmp_path / "chatmem.db"))
    try:
        for c, seqs in enumerate(acked):
            assert seqs == list(range(1, len(seqs) + 1))
            stored = await store.messages.list_messages(ThreadKey("default", f"c{c}"), 1, False, 10_000)
            assert [m.seq for m in stored][: len(seqs)] == seqs
            assert len(stored) - len(seqs) <= 2, "at most the one exchange in flight at the stop may land unacked"
    finally:
        await store.close()
    assert sum(len(s) for s in acked) > 0


def test_migrate_subcommand_applies_then_reports_up_to_date(tmp_path: pathlib.Path) -> None:
    pg = PostgresProcess()
    pg.start()
    try:
        env = {**server_env(tmp_path, free_port(), DATABASE__URL=pg.url), "PYTHONPATH": str(ROOT)}
        cmd = [sys.executable, "-m", "server", "migrate"]
        first = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert first.returncode == 0, first.stderr
        assert "0001_init" in first.stdout
        second = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert "up to date" in second.stdout
    finally:
        pg.close()


def children_of(pid: int) -> list[int]:
    found = []
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            if stat.read_text().rsplit(")", 1)[1].split()[1] == str(pid):
                found.append(int(stat.parent.name))
        except (OSError, IndexError):
            continue
    return found


def spawn_server(env: dict[str, str], cwd: pathlib.Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "server"], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


async def test_two_workers_share_the_port_and_stop_together(tmp_path: pathlib.Path) -> None:
    pg = PostgresProcess()
    pg.start()
    port = free_port()
    env = {**server_env(tmp_path, port, DATABASE__URL=pg.url, GRPC__WORKERS="2"), "PYTHONPATH": str(ROOT)}
    proc = spawn_server(env, tmp_path)
    try:
        channels = [await wait_serving(port) for _ in range(8)]
        for i, channel in enumerate(channels):  # each channel is one connection, pinned to one worker
            stub = pb_grpc.ThreadMemoryServiceStub(channel)
            await stub.AppendMessages(pb.AppendMessagesRequest(thread_id=f"w{i}", messages=exchange(i)), timeout=10)
            got = await stub.GetHistory(pb.GetHistoryRequest(thread_id=f"w{i}"), timeout=10)
            assert [m.content for m in got.messages] == [f"question {i}", f"answer {i}"]
        assert len(await asyncio.to_thread(children_of, proc.pid)) >= 2, "two worker processes"
        for channel in channels:
            await channel.close()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        pg.close()


def alive(pid: int) -> bool:
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def test_auto_workers_one_per_core_with_postgresql_die_with_their_parent(tmp_path: pathlib.Path) -> None:
    """GRPC__WORKERS unset (auto) with PostgreSQL: one worker per core; a second server on the port is refused;
    a SIGKILL of the parent leaves no worker serving the port."""
    from server.cores import available_cores

    pg = PostgresProcess()
    pg.start()
    port = free_port()
    env = {**server_env(tmp_path, port, DATABASE__URL=pg.url), "PYTHONPATH": str(ROOT)}
    cores = available_cores()
    proc = spawn_server(env, tmp_path)
    try:
        channel = await wait_serving(port)
        workers = await asyncio.to_thread(children_of, proc.pid)
        if cores > 1:
            assert len(workers) >= cores, f"{cores} cores, worker processes {workers}"
        second = spawn_server(env, tmp_path)
        out, _ = await asyncio.to_thread(second.communicate, timeout=60)
        assert second.returncode != 0 and "another process listens" in out, out
        await pb_grpc.ThreadMemoryServiceStub(channel).GetHistory(pb.GetHistoryRequest(thread_id="t"), timeout=10)
        await channel.close()
        proc.kill()
        await asyncio.to_thread(proc.wait, 30)
        for _ in range(100):  # bounded: 100 x 50 ms for the kernel to deliver the workers' SIGKILL
            if not any(alive(pid) for pid in workers):
                break
            await asyncio.sleep(0.05)
        assert not any(alive(pid) for pid in workers), "workers outlived their parent"
    finally:
        if proc.poll() is None:
            proc.kill()
        pg.close()


async def test_auto_workers_stay_within_postgresql_free_connections(tmp_path: pathlib.Path) -> None:
    """Every worker opens up to DATABASE__POOL_MAX_SIZE connections: auto starts no more workers than fit."""
    from server.cores import available_cores

    if available_cores() < 2:
        pytest.skip("one core: auto is one worker whatever PostgreSQL allows")
    pg = PostgresProcess({"max_connections": "20"})  # 17 for clients: one pool of 10 fits, two do not
    pg.start()
    port = free_port()
    env = {**server_env(tmp_path, port, DATABASE__URL=pg.url, DATABASE__POOL_MAX_SIZE="10"), "PYTHONPATH": str(ROOT)}
    proc = spawn_server(env, tmp_path)
    try:
        channel = await wait_serving(port)
        assert await asyncio.to_thread(children_of, proc.pid) == [], "one process: two pools would not fit"
        await pb_grpc.ThreadMemoryServiceStub(channel).GetHistory(pb.GetHistoryRequest(thread_id="t"), timeout=10)
        await channel.close()
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.to_thread(proc.communicate, timeout=30)
        assert "not one per core" in out and "DATABASE__POOL_MAX_SIZE=10" in out, out
    finally:
        if proc.poll() is None:
            proc.kill()
        pg.close()
