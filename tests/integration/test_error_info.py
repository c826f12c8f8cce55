"""A matrix of real failures: each status the server sends carries ErrorInfo, and the Python client reads it."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from chatmem import NO_RETRY, ChatmemError, MemoryClient
from chatmem.errors import from_grpc_error
from chatmem.v1 import thread_memory_service_pb2 as pb
from devtools.postgres import PostgresProcess
from server.config import QuotaSettings
from tests.authkit import create_key, with_auth
from tests.conftest import make_settings, start_harness

pytestmark = pytest.mark.integration


async def failure(call: Awaitable[Any]) -> ChatmemError:
    with pytest.raises(ChatmemError) as caught:
        await call
    error = caught.value
    assert error.domain == "chatmem.dev", error
    assert error.request_id, "the request id comes back with the error"
    return error


async def test_each_request_error_carries_its_reason() -> None:
    h = await start_harness(make_settings())
    try:
        async with MemoryClient.connect(f"127.0.0.1:{h.app.port}", workspace_id=h.ws, retry=NO_RETRY) as memory:
            bad = await failure(memory.append_messages("bad id!", [], user_id="no spaces"))
            assert (bad.reason, sorted(bad.fields)) == ("INVALID_ARGUMENT", ["messages", "thread_id", "user_id"])  # type: ignore[attr-defined]
            missing = await failure(memory.get_thread("nobody"))
            assert (missing.reason, missing.metadata) == ("THREAD_NOT_FOUND", {"thread_id": "nobody"})
            assert (await failure(memory.delete_thread("nobody"))).reason == "THREAD_NOT_FOUND"
            await memory.append("t", "user", "one")
            conflict = await failure(memory.append("t", "user", "two", expected_last_seq=7))
            assert conflict.reason == "LAST_SEQ_MISMATCH" and conflict.code is grpc.StatusCode.ABORTED
            # Bytes that do not parse are refused before any handler: the same reason and field.
            garbage = h.channel.unary_unary("/chatmem.v1.ThreadMemoryService/GetHistory")
            with pytest.raises(grpc.aio.AioRpcError) as raw:
                await garbage(b"\xff\xff\xff")
            undecodable = from_grpc_error(raw.value)
            assert (undecodable.reason, undecodable.fields) == ("INVALID_ARGUMENT", ["request"])  # type: ignore[attr-defined]
    finally:
        await h.close()


async def test_auth_failures_carry_their_reasons(tmp_path: pathlib.Path) -> None:
    settings = with_auth(make_settings(sqlite_path=str(tmp_path / "db")), mode="api_key", max_failures=2)
    h = await start_harness(settings)
    try:
        reader, _ = await create_key(h.app.store.keys, "acme", "read")
        target = f"127.0.0.1:{h.app.port}"
        async with MemoryClient.connect(target, api_key=reader, retry=NO_RETRY) as memory:
            denied = await failure(memory.append("t", "user", "hi"))
            assert denied.reason == "PERMISSION_DENIED"
        async with MemoryClient.connect(target, api_key="cm_bogus.key", retry=NO_RETRY) as memory:
            reasons = [(await failure(memory.get_history("t"))).reason for _ in range(3)]
        assert reasons == ["UNAUTHENTICATED", "UNAUTHENTICATED", "TOO_MANY_AUTH_FAILURES"]
    finally:
        await h.close()


async def test_quota_refusal_names_the_limit() -> None:
    settings = make_settings()
    h = await start_harness(settings.model_copy(update={"quota": QuotaSettings(requests_per_s=1, requests_burst=1)}))
    try:
        async with MemoryClient.connect(f"127.0.0.1:{h.app.port}", workspace_id=h.ws, retry=NO_RETRY) as memory:
            await memory.get_history("t")
            refused = await failure(memory.get_history("t"))
        assert (refused.reason, refused.metadata) == ("QUOTA_EXCEEDED", {"limit": "requests"})
        assert refused.retry_after is not None and refused.retry_after > 0
    finally:
        await h.close()


async def test_a_store_outage_is_store_unavailable(own_pg: PostgresProcess) -> None:
    h = await start_harness(make_settings(database_url=own_pg.url))
    try:
        async with MemoryClient.connect(f"127.0.0.1:{h.app.port}", workspace_id=h.ws, retry=NO_RETRY) as memory:
            await memory.append("t", "user", "before")
            await asyncio.to_thread(own_pg.stop)
            calls: list[Callable[[], Awaitable[Any]]] = [
                lambda: memory.append("t", "user", "during"),
                lambda: memory.get_history("t"),
                lambda: memory.get_thread("t"),
            ]
            reasons = {(await failure(call())).reason for call in calls}
        assert reasons == {"STORE_UNAVAILABLE"}
    finally:
        await h.close()


async def test_a_bug_and_a_slow_store_still_carry_internal_and_deadline_reasons(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = await start_harness(make_settings(grpc={"default_timeout_s": 0.3}))
    repo = h.app.repository

    async def broken(*_: Any) -> Any:
        raise RuntimeError("a bug")

    async def slow(*_: Any) -> Any:
        await asyncio.sleep(2)

    try:
        # No client deadline: the server's own time budget (GRPC__DEFAULT_TIMEOUT_S) runs out first.
        async with MemoryClient.connect(f"127.0.0.1:{h.app.port}", workspace_id=h.ws, retry=NO_RETRY) as memory:
            repo.get_thread = broken  # type: ignore[method-assign]
            internal = await failure(memory.get_thread("t"))
            repo.history = slow  # type: ignore[method-assign]
            # The raw stub, so that the call carries no deadline at all (the client's has a default).
            with pytest.raises(grpc.aio.AioRpcError) as raw:
                await memory.raw.threads.GetHistory(pb.GetHistoryRequest(workspace_id=h.ws, thread_id="t"))
            late = from_grpc_error(raw.value)
    finally:
        await h.close()
    assert (internal.code, internal.reason) == (grpc.StatusCode.INTERNAL, "INTERNAL")
    assert "a bug" not in internal.message, "no internals reach the caller"
    assert "unexpected error in GetThread" in caplog.text
    assert (late.code, late.reason, late.domain) == (
        grpc.StatusCode.DEADLINE_EXCEEDED,
        "DEADLINE_EXCEEDED",
        "chatmem.dev",
    )
