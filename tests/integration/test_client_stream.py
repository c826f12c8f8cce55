"""stream_history resumes by itself: a server restarted mid-stream costs the reader nothing, not even a duplicate."""

from __future__ import annotations

import asyncio
import logging
import pathlib
from collections.abc import AsyncIterator

import grpc
import pytest

from chatmem import (
    DeadlineExceededError,
    InvalidArgumentError,
    MemoryClient,
    Message,
    MessageInput,
    RetryPolicy,
    UnavailableError,
)
from chatmem.v1 import resources_pb2, thread_memory_service_pb2, thread_memory_service_pb2_grpc
from devtools.ports import free_port
from server.app import App, create_server
from server.config import GrpcSettings, Settings
from tests.conftest import make_settings
from tests.integration.conftest import backend_settings

pytestmark = pytest.mark.integration

TOTAL = 3000
PATIENT = RetryPolicy(max_attempts=20, initial_backoff_s=0.05, max_backoff_s=0.5)


def on_port(settings: Settings, port: int) -> Settings:
    # Grace 0: stopping aborts the stream in flight, as a crash or a deploy without drain would.
    settings.grpc = GrpcSettings(address=f"127.0.0.1:{port}", shutdown_grace_s=0)
    return settings


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
@pytest.mark.parametrize("restart_delay_s", [0.0, 0.5], ids=["at-once", "after-a-pause"])
async def test_stream_survives_a_server_restart_exactly_once_in_order(
    request: pytest.FixtureRequest,
    tmp_path: pathlib.Path,
    backend: str,
    restart_delay_s: float,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="chatmem._stream")
    port = free_port()
    settings = on_port(backend_settings(request, backend, tmp_path), port)
    app: App = await create_server(settings)
    await app.start()
    thread = f"long-{backend}-{int(restart_delay_s * 10)}-{tmp_path.name}"
    try:
        async with MemoryClient.connect(f"127.0.0.1:{port}", retry=PATIENT) as client:
            for start in range(0, TOTAL, 100):
                # Large enough messages that the stream cannot sit whole in the socket buffers.
                batch = [MessageInput("user", f"m{i} " + "x" * 1000) for i in range(start + 1, start + 101)]
                await client.append_messages(thread, batch)
            seqs: list[int] = []
            contents_ok = True
            async for message in client.stream_history(thread, chunk_size=10):
                seqs.append(message.seq)
                contents_ok = contents_ok and message.content.startswith(f"m{message.seq} ")
                if len(seqs) == 200:
                    await app.stop(0)
                    if restart_delay_s:
                        await asyncio.sleep(restart_delay_s)
                    app = await create_server(settings)
                    await app.start()
            assert seqs == list(range(1, TOTAL + 1)), "every message exactly once, in seq order"
            assert contents_ok
            assert "resuming" in caplog.text, "the stream was really interrupted"
    finally:
        await app.stop(0)


class Scripted(thread_memory_service_pb2_grpc.ThreadMemoryServiceServicer):
    """A stand-in server whose streams fail in set ways, to pin the client's resumption rules."""

    def __init__(self) -> None:
        self.after_seqs: list[int] = []
        self.mode = "flaky"

    async def StreamHistory(
        self, request: thread_memory_service_pb2.StreamHistoryRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[thread_memory_service_pb2.StreamHistoryResponse]:
        self.after_seqs.append(request.after_seq)
        if self.mode == "stall":
            yield chunk(1, 2)
            await asyncio.sleep(30)
        elif self.mode == "repeat":
            # A server that resends what the reader already has must not produce duplicates.
            start = max(1, request.after_seq - 1)
            yield chunk(start, start + 2)
            if request.after_seq < 4:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "going away")
        elif self.mode == "down":
            if request.after_seq == 0:
                yield chunk(1, 2)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "down for good")
        elif request.after_seq == 0:
            yield chunk(1, 3)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "going away")
        elif request.after_seq == 3:
            yield chunk(4, 4)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "going away again")
        else:
            yield chunk(request.after_seq + 1, 5)


def chunk(first: int, last: int) -> thread_memory_service_pb2.StreamHistoryResponse:
    return thread_memory_service_pb2.StreamHistoryResponse(
        messages=[
            resources_pb2.Message(seq=s, role=resources_pb2.ROLE_USER, content=f"m{s}") for s in range(first, last + 1)
        ]
    )


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[Scripted, str]]:
    servicer = Scripted()
    server = grpc.aio.server()
    thread_memory_service_pb2_grpc.add_ThreadMemoryServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield servicer, f"127.0.0.1:{port}"
    await server.stop(0)


async def test_resumes_after_the_last_seq_received_and_counts_only_failures_without_progress(
    scripted: tuple[Scripted, str],
) -> None:
    servicer, target = scripted
    async with MemoryClient.connect(target, retry=RetryPolicy(max_attempts=2, initial_backoff_s=0.01)) as client:
        # Two breaks, each after some progress: max_attempts=2 allows both.
        assert [m.seq async for m in client.stream_history("t")] == [1, 2, 3, 4, 5]
    assert servicer.after_seqs == [0, 3, 4]


async def read_into(stream: AsyncIterator[Message], seen: list[int]) -> None:
    async for m in stream:
        seen.append(m.seq)


async def test_consecutive_failures_without_progress_give_up(scripted: tuple[Scripted, str]) -> None:
    servicer, target = scripted
    servicer.mode = "down"
    seen: list[int] = []
    async with MemoryClient.connect(target, retry=RetryPolicy(max_attempts=3, initial_backoff_s=0.01)) as client:
        with pytest.raises(UnavailableError, match="down for good"):
            await read_into(client.stream_history("t"), seen)
    assert seen == [1, 2]
    assert servicer.after_seqs == [0, 2, 2]


async def test_a_server_that_repeats_messages_yields_no_duplicates(scripted: tuple[Scripted, str]) -> None:
    servicer, target = scripted
    servicer.mode = "repeat"
    async with MemoryClient.connect(target, retry=RetryPolicy(initial_backoff_s=0.01)) as client:
        assert [m.seq async for m in client.stream_history("t")] == [1, 2, 3, 4, 5]


async def test_a_stalled_stream_fails_after_the_idle_timeout(scripted: tuple[Scripted, str]) -> None:
    servicer, target = scripted
    servicer.mode = "stall"
    async with MemoryClient.connect(target) as client:
        seen: list[int] = []
        with pytest.raises(DeadlineExceededError, match="no chunk arrived"):
            await read_into(client.stream_history("t", idle_timeout=0.3), seen)
        assert seen == [1, 2]


async def test_a_permanent_error_is_not_retried(tmp_path: pathlib.Path) -> None:
    app = await create_server(on_port(make_settings(sqlite_path=str(tmp_path / "chatmem.db")), free_port()))
    await app.start()
    try:
        async with MemoryClient.connect(f"127.0.0.1:{app.port}") as client:
            with pytest.raises(InvalidArgumentError) as caught:
                async for _ in client.stream_history("t", chunk_size=10**6):
                    pass
            assert caught.value.fields == ["chunk_size"]
    finally:
        await app.stop(0)
