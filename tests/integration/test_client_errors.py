"""Failures as a client user sees them: each status the server sends arrives as its exception, and retries work."""

from __future__ import annotations

import asyncio
import logging
import pathlib
from collections.abc import AsyncIterator

import grpc
import pytest

from chatmem import (
    NO_RETRY,
    ConflictError,
    DeadlineExceededError,
    InvalidArgumentError,
    MemoryClient,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    RetryPolicy,
    SyncMemoryClient,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
)
from chatmem.errors import from_grpc_error
from chatmem.v1 import resources_pb2, thread_memory_service_pb2, thread_memory_service_pb2_grpc
from devtools.ports import free_port
from devtools.postgres import PostgresProcess
from server.app import App, create_server
from server.config import GrpcSettings, Settings
from tests.conftest import Harness, make_settings, start_harness

pytestmark = pytest.mark.integration

FAST = RetryPolicy(max_attempts=3, initial_backoff_s=0.01, max_backoff_s=0.05)


@pytest.fixture
async def h() -> AsyncIterator[Harness]:
    harness = await start_harness(make_settings())
    yield harness
    await harness.close()


@pytest.fixture
async def memory(h: Harness) -> AsyncIterator[MemoryClient]:
    async with MemoryClient.connect(f"127.0.0.1:{h.app.port}", workspace_id=h.ws, retry=FAST) as client:
        yield client


async def test_invalid_argument_names_every_bad_field(memory: MemoryClient) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        await memory.append_messages("bad id!", [], user_id="no spaces allowed", title="x" * 2000)
    error = caught.value
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert set(error.fields) == {"thread_id", "user_id", "title", "messages"}
    assert all(v.description for v in error.violations)
    with pytest.raises(InvalidArgumentError) as caught:
        await memory.get_history("t", limit=-1)
    assert caught.value.fields == ["limit"]


async def test_not_found_from_get_update_and_delete(memory: MemoryClient) -> None:
    for call in (
        memory.get_thread("ghost"),
        memory.update_thread("ghost", title="x"),
        memory.delete_thread("ghost"),
    ):
        with pytest.raises(NotFoundError) as caught:
            await call
        assert "ghost" in caught.value.message


async def test_aborted_is_a_conflict(memory: MemoryClient) -> None:
    await memory.append("t", "user", "first")
    with pytest.raises(ConflictError) as caught:
        await memory.append("t", "user", "stale writer", expected_last_seq=0)
    assert caught.value.code is grpc.StatusCode.ABORTED


async def test_a_request_larger_than_the_server_accepts_is_resource_exhausted(memory: MemoryClient) -> None:
    with pytest.raises(ResourceExhaustedError):
        await memory.append("t", "user", "x" * (9 * 1024 * 1024))
    assert await memory.count("t") == 0


async def test_a_passed_deadline_is_deadline_exceeded() -> None:
    # A listener that accepts and never answers: the call can only end by its deadline.
    silent = await asyncio.start_server(lambda reader, writer: None, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    try:
        async with MemoryClient.connect(f"127.0.0.1:{port}", retry=FAST) as client:
            with pytest.raises(DeadlineExceededError):
                await client.get_history("t", timeout=0.3)
    finally:
        silent.close()
        await silent.wait_closed()


async def test_an_unknown_method_is_unimplemented(memory: MemoryClient) -> None:
    call = memory.raw.channel.unary_unary("/chatmem.v1.ThreadMemoryService/NoSuchMethod")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(b"")
    assert type(from_grpc_error(caught.value)) is UnimplementedError


async def test_no_server_is_unavailable_after_the_retries() -> None:
    async with MemoryClient.connect(f"127.0.0.1:{free_port()}", retry=FAST) as client:
        with pytest.raises(UnavailableError) as caught:
            await client.get_history("t")
    assert caught.value.code is grpc.StatusCode.UNAVAILABLE


def settings_on(port: int, db: pathlib.Path) -> Settings:
    """Settings for a server on a fixed port and a file store, so that a restart finds both again."""
    settings = make_settings(sqlite_path=str(db))
    settings.grpc = GrpcSettings(address=f"127.0.0.1:{port}", shutdown_grace_s=0)
    return settings


async def test_a_call_retries_until_a_restarted_server_answers(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="chatmem._retry")
    port = free_port()
    settings = settings_on(port, tmp_path / "chatmem.db")
    first = await create_server(settings)
    await first.start()
    patient = RetryPolicy(max_attempts=30, initial_backoff_s=0.05, max_backoff_s=0.2)
    async with MemoryClient.connect(f"127.0.0.1:{port}", retry=patient, timeout=30) as client:
        await client.append("t", "user", "before", request_id="r1")
        await first.stop(0)

        async def restart_later() -> App:
            await asyncio.sleep(0.5)  # the call below fails a few times first
            second = await create_server(settings)
            await second.start()
            return second

        restarting = asyncio.ensure_future(restart_later())
        result = await client.append("t", "user", "after", request_id="r2")
        second = await restarting
        try:
            assert "retrying" in caplog.text, "the server was down when the call started"
            assert result.seqs == (2,) and not result.replayed
            assert await client.get_history("t") == [
                {"role": "user", "content": "before"},
                {"role": "user", "content": "after"},
            ]
        finally:
            await second.stop(0)


async def test_a_store_outage_is_unavailable_with_the_servers_retry_hint_then_retries_succeed(
    own_pg: PostgresProcess, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="chatmem._retry")
    h = await start_harness(make_settings(database_url=own_pg.url))
    try:
        target = f"127.0.0.1:{h.app.port}"
        async with MemoryClient.connect(target, workspace_id=h.ws, retry=NO_RETRY) as impatient:
            await impatient.append("t", "user", "before the outage")
            await asyncio.to_thread(own_pg.stop)
            with pytest.raises(UnavailableError) as caught:
                await impatient.append("t", "user", "during the outage")
            assert caught.value.retry_after is not None and caught.value.retry_after > 0

        patient = RetryPolicy(max_attempts=60, initial_backoff_s=0.1, max_backoff_s=0.5)
        async with MemoryClient.connect(target, workspace_id=h.ws, retry=patient, timeout=60) as client:
            writing = asyncio.ensure_future(client.append("t", "user", "across the outage"))
            await asyncio.to_thread(own_pg.start)
            result = await writing
            assert "retrying" in caplog.text, "the append met the outage"
            assert result.seqs == (2,)
            assert [m["content"] for m in await client.get_history("t")] == ["before the outage", "across the outage"]
    finally:
        await h.close()


class Gatekeeper(thread_memory_service_pb2_grpc.ThreadMemoryServiceServicer):
    """A stand-in server that checks the credential, as an authenticating deployment would."""

    async def GetHistory(
        self, request: thread_memory_service_pb2.GetHistoryRequest, context: grpc.aio.ServicerContext
    ) -> thread_memory_service_pb2.GetHistoryResponse:
        metadata = dict(context.invocation_metadata() or ())
        if metadata.get("authorization") != "Bearer s3cret":
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong API key")
        if metadata.get("x-tenant") != "acme":
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "not a member of this tenant")
        seen = f"{metadata['authorization']} {metadata['x-tenant']}"
        return thread_memory_service_pb2.GetHistoryResponse(
            messages=[resources_pb2.Message(seq=1, role=resources_pb2.ROLE_USER, content=seen)]
        )


@pytest.fixture
async def gatekeeper() -> AsyncIterator[str]:
    server = grpc.aio.server()
    thread_memory_service_pb2_grpc.add_ThreadMemoryServiceServicer_to_server(Gatekeeper(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(0)


async def test_api_key_and_metadata_reach_the_server_and_auth_failures_map(gatekeeper: str) -> None:
    async with MemoryClient.connect(gatekeeper, api_key="s3cret", metadata={"X-Tenant": "acme"}) as client:
        assert await client.get_history("t") == [{"role": "user", "content": "Bearer s3cret acme"}]
        raw = await client.raw.threads.GetHistory(thread_memory_service_pb2.GetHistoryRequest(thread_id="t"))
        assert raw.messages[0].content == "Bearer s3cret acme", "raw stub calls carry the metadata too"
    async with MemoryClient.connect(gatekeeper) as anonymous:
        with pytest.raises(UnauthenticatedError):
            await anonymous.get_history("t")
    async with MemoryClient.connect(gatekeeper, api_key="s3cret", metadata={"x-tenant": "evil"}) as outsider:
        with pytest.raises(PermissionDeniedError):
            await outsider.get_history("t")

    def blocking_raw() -> str:
        with SyncMemoryClient.connect(gatekeeper, api_key="s3cret", metadata=[("x-tenant", "acme")]) as client:
            request = thread_memory_service_pb2.GetHistoryRequest(thread_id="t")
            return str(client.raw.threads.GetHistory(request, timeout=5).messages[0].content)

    assert await asyncio.to_thread(blocking_raw) == "Bearer s3cret acme"
