"""The token-budget options reach the server as set, and only when set (the fields have presence on main)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from chatmem import MemoryClient, SyncMemoryClient, ThreadContextProvider
from chatmem.v1 import thread_memory_service_pb2, thread_memory_service_pb2_grpc

pytestmark = pytest.mark.integration


class Recorder(thread_memory_service_pb2_grpc.ThreadMemoryServiceServicer):
    """A stand-in server that records the fields each request set."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    async def GetHistory(
        self, request: thread_memory_service_pb2.GetHistoryRequest, context: grpc.aio.ServicerContext
    ) -> thread_memory_service_pb2.GetHistoryResponse:
        self.seen.append({f.name: v for f, v in request.ListFields()})
        return thread_memory_service_pb2.GetHistoryResponse()

    async def GetContext(
        self, request: thread_memory_service_pb2.GetContextRequest, context: grpc.aio.ServicerContext
    ) -> thread_memory_service_pb2.GetContextResponse:
        self.seen.append({f.name: v for f, v in request.ListFields()})
        return thread_memory_service_pb2.GetContextResponse()


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[str, Recorder]]:
    server = grpc.aio.server()
    recorder = Recorder()
    thread_memory_service_pb2_grpc.add_ThreadMemoryServiceServicer_to_server(recorder, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}", recorder
    await server.stop(0)


async def test_budgets_are_sent_only_when_given(recorder: tuple[str, Recorder]) -> None:
    target, rec = recorder
    async with MemoryClient.connect(target) as client:
        await client.get_history("t")
        await client.get_history("t", max_tokens=120, keep_system_prefix=True)
        await client.get_context(thread_id="t")
        await client.get_context(thread_id="t", max_tokens=300)
        await ThreadContextProvider(client, thread_id="t", max_tokens=50).invoking()
    assert rec.seen == [
        {"thread_id": "t"},
        {"thread_id": "t", "max_tokens": 120, "keep_system_prefix": True},
        {"thread_id": "t"},
        {"thread_id": "t", "max_tokens": 300},
        {"thread_id": "t", "max_tokens": 50},
    ]


async def test_the_sync_client_sends_the_budget_too(recorder: tuple[str, Recorder]) -> None:
    target, rec = recorder

    def calls() -> None:
        with SyncMemoryClient.connect(target) as client:
            client.get_history("t", max_tokens=64, typed=True)
            client.get_context(thread_id="t", max_tokens=32)

    await asyncio.to_thread(calls)
    assert rec.seen == [{"thread_id": "t", "max_tokens": 64}, {"thread_id": "t", "max_tokens": 32}]
