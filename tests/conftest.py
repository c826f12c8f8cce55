"""Shared test helpers: settings that ignore the caller's environment, and an in-process server harness."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from chatmem.v1 import preferences_service_pb2_grpc, resources_pb2, thread_memory_service_pb2_grpc
from server.app import App, create_server
from server.config import (
    DatabaseSettings,
    GrpcSettings,
    LimitSettings,
    MemorySettings,
    OutboxSettings,
    RedisSettings,
    Settings,
)


def make_settings(
    *,
    database_url: str | None = None,
    sqlite_path: str = ":memory:",
    redis_url: str | None = None,
    outbox: dict[str, Any] | None = None,
    grpc: dict[str, Any] | None = None,
    **memory: Any,
) -> Settings:
    """Settings for a test server on a free port; nothing comes from the environment or a .env file."""
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        grpc=GrpcSettings(**{"address": "127.0.0.1:0", "shutdown_grace_s": 2.0, **(grpc or {})}),
        database=DatabaseSettings(url=database_url, sqlite_path=sqlite_path),
        # Each test server gets its own key prefix: servers with different stores must not share an outbox.
        redis=RedisSettings(url=redis_url, probe_interval_s=0.2, key_prefix=f"cm{uuid.uuid4().hex[:8]}"),
        memory=MemorySettings(**memory),
        outbox=OutboxSettings(**{"block_ms": 20, "claim_idle_ms": 1000, "claim_interval_s": 0.5, **(outbox or {})}),
        limits=LimitSettings(),
        log_level="INFO",
    )


@dataclass
class Harness:
    """A started in-process server with stubs on one channel."""

    app: App
    channel: grpc.aio.Channel
    threads: thread_memory_service_pb2_grpc.ThreadMemoryServiceStub
    prefs: preferences_service_pb2_grpc.PreferencesServiceStub
    ws: str

    @property
    def durability(self) -> int:
        """The durability an acknowledged append reports on this server."""
        return (
            resources_pb2.DURABILITY_QUEUED if self.app.repository.write_behind else resources_pb2.DURABILITY_PERSISTED
        )

    async def drained(self, timeout_s: float = 15.0) -> None:
        """Wait until the write_behind outbox is empty (everything acknowledged is in the store)."""
        flusher = self.app.flusher
        if flusher is None:
            return
        deadline = asyncio.get_running_loop().time() + timeout_s
        while await flusher.depth():
            assert asyncio.get_running_loop().time() < deadline, "the outbox did not drain"
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        """Close the channel and stop the server."""
        await self.channel.close()
        await self.app.stop(grace_s=1.0)


async def start_harness(settings: Settings) -> Harness:
    """Build, start and connect to a server."""
    app = await create_server(settings)
    await app.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
    return Harness(
        app,
        channel,
        thread_memory_service_pb2_grpc.ThreadMemoryServiceStub(channel),
        preferences_service_pb2_grpc.PreferencesServiceStub(channel),
        ws=f"ws-{uuid.uuid4().hex[:12]}",
    )


def msg(content: str, role: int = resources_pb2.ROLE_USER, **kw: Any) -> resources_pb2.MessageInput:
    """A MessageInput."""
    return resources_pb2.MessageInput(role=role, content=content, **kw)  # type: ignore[arg-type]


def exchange(i: int) -> list[resources_pb2.MessageInput]:
    """A user message and an assistant reply, numbered."""
    return [msg(f"question {i}"), msg(f"answer {i}", resources_pb2.ROLE_ASSISTANT)]


@pytest.fixture
async def sqlite_api() -> AsyncIterator[Harness]:
    """A server on an in-memory SQLite store with no cache (for validation and pure API checks)."""
    h = await start_harness(make_settings())
    yield h
    await h.close()
