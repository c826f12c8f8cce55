"""chatmem-mcp: the mcp package's own client lists and calls every tool over stdio (and streamable HTTP) against a real server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

from chatmem import MemoryClient
from devtools.ports import free_port
from tests.authkit import create_key, with_auth
from tests.conftest import Harness, make_settings, start_harness

pytestmark = pytest.mark.integration

TOOLS = {
    "get_context",
    "append_messages",
    "get_history",
    "list_threads",
    "fork_thread",
    "truncate_thread",
    "get_preferences",
    "set_preferences",
}


@contextlib.asynccontextmanager
async def stdio_session(
    api: Harness, *, workspace: str | None = None, env: dict[str, str] | None = None
) -> AsyncIterator[ClientSession]:
    """chatmem-mcp over stdio, as an MCP host starts it (not a fixture: anyio's scopes must close in their own task)."""
    ws = api.ws if workspace is None else workspace
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "chatmem.mcp", "--target", f"127.0.0.1:{api.app.port}", "--workspace", ws],
        env=env,
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


@pytest.fixture
async def memory(api: Harness) -> AsyncIterator[MemoryClient]:
    async with MemoryClient.connect(f"127.0.0.1:{api.app.port}", workspace_id=api.ws) as client:
        yield client


async def call(session: ClientSession, name: str, **arguments: Any) -> Any:
    result = await session.call_tool(name, arguments)
    assert not result.is_error, result.content
    return result.structured_content


async def test_tools_have_schemas_and_annotations(api: Harness) -> None:
    async with stdio_session(api) as mcp_session:
        tools = {t.name: t for t in (await mcp_session.list_tools()).tools}
        assert set(tools) == TOOLS
        for tool in tools.values():
            assert tool.description
            assert tool.input_schema["type"] == "object"
            assert tool.output_schema is not None and tool.output_schema["type"] == "object", tool.name
            assert "workspace_id" not in tool.input_schema["properties"], "the workspace comes from the connection"
            assert tool.annotations is not None and tool.annotations.open_world_hint is False
        for name in ("get_context", "get_history", "list_threads", "get_preferences"):
            assert tools[name].annotations.read_only_hint is True, name
        hints = {
            n: (t.annotations.read_only_hint, t.annotations.destructive_hint, t.annotations.idempotent_hint)
            for n, t in tools.items()
        }
        assert hints["append_messages"] == (False, False, False)
        assert hints["fork_thread"] == (False, False, False)
        assert hints["truncate_thread"] == (False, True, True)
        assert hints["set_preferences"] == (False, True, True)
        append = tools["append_messages"].input_schema
        assert set(append["required"]) == {"thread_id", "messages"}
        message = append["$defs"]["MessageIn"]
        assert message["properties"]["role"]["enum"] == ["user", "assistant", "system", "tool", "developer"]
        assert tools["truncate_thread"].input_schema["required"] == ["thread_id", "after_seq"]
        assert set(tools["get_history"].output_schema["properties"]) == {"thread_id", "messages"}


async def test_every_tool_against_the_server(api: Harness, memory: MemoryClient) -> None:
    async with stdio_session(api) as mcp_session:
        turn = [{"role": "user", "content": "Plan a day in Lyon."}, {"role": "assistant", "content": "Vieux Lyon."}]
        appended = await call(
            mcp_session, "append_messages", thread_id="trip", messages=turn, user_id="ada", title="Lyon"
        )
        assert appended["seqs"] == [1, 2]
        assert appended["message_count"] == 2
        again = await call(
            mcp_session,
            "append_messages",
            thread_id="trip",
            messages=[{"role": "user", "content": "Then?"}],
            request_id="r-1",
        )
        replay = await call(
            mcp_session,
            "append_messages",
            thread_id="trip",
            messages=[{"role": "user", "content": "Then?"}],
            request_id="r-1",
        )
        assert (again["seqs"], replay["seqs"], replay["replayed"]) == ([3], [3], True)
        assert await memory.get_history("trip") == [*turn, {"role": "user", "content": "Then?"}]

        history = await call(mcp_session, "get_history", thread_id="trip", limit=2)
        assert [(m["seq"], m["role"], m["content"]) for m in history["messages"]] == [
            (2, "assistant", "Vieux Lyon."),
            (3, "user", "Then?"),
        ]

        assert await call(
            mcp_session, "set_preferences", user_id="ada", preferences={"tone": "brief", "lang": "en"}
        ) == {"written": 2}
        assert await memory.get_preferences("ada") == {"lang": "en", "tone": "brief"}
        prefs = await call(mcp_session, "get_preferences", user_id="ada", keys=["tone"])
        assert prefs == {"user_id": "ada", "preferences": {"tone": "brief"}}

        context = await call(mcp_session, "get_context", thread_id="trip", user_id="ada", max_messages=1)
        assert context["text"] == "Previous conversation:\nuser: Then?\n\nUser preferences:\nlang: en\ntone: brief"
        assert (context["message_count"], context["preference_count"]) == (1, 2)

        fork = await call(
            mcp_session, "fork_thread", thread_id="trip", new_thread_id="trip-b", through_seq=2, title="Lyon B"
        )
        assert (fork["parent_thread_id"], fork["fork_seq"], fork["message_count"], fork["title"]) == (
            "trip",
            2,
            2,
            "Lyon B",
        )
        assert (await memory.get_thread("trip-b")).user_id == "ada"

        cut = await call(mcp_session, "truncate_thread", thread_id="trip", after_seq=1, expected_last_seq=3)
        assert cut["removed_count"] == 2
        assert [m["content"] for m in cut["removed"]] == ["Vieux Lyon.", "Then?"]
        assert cut["thread"]["last_seq"] == 3
        assert await memory.get_history("trip") == turn[:1]

        threads = await call(mcp_session, "list_threads", user_id="ada", page_size=1)
        assert len(threads["threads"]) == 1 and threads["next_page_token"]
        rest = await call(mcp_session, "list_threads", user_id="ada", page_token=threads["next_page_token"])
        assert {t["thread_id"] for t in threads["threads"] + rest["threads"]} == {"trip", "trip-b"}
        assert rest["next_page_token"] == ""


async def test_server_errors_are_tool_errors(api: Harness, memory: MemoryClient) -> None:
    async with stdio_session(api) as mcp_session:
        missing = await mcp_session.call_tool("truncate_thread", {"thread_id": "never", "after_seq": 0})
        assert missing.is_error
        assert "NOT_FOUND" in missing.content[0].text
        bad_id = await mcp_session.call_tool("get_history", {"thread_id": "no spaces"})
        assert bad_id.is_error
        assert "INVALID_ARGUMENT" in bad_id.content[0].text and "thread_id" in bad_id.content[0].text
        bad_role = await mcp_session.call_tool(
            "append_messages", {"thread_id": "t", "messages": [{"role": "robot", "content": "x"}]}
        )
        assert bad_role.is_error, "the input schema is checked before any call"
        await memory.append("t", "user", "hi")
        await memory.append("t2", "user", "taken")
        clash = await mcp_session.call_tool("fork_thread", {"thread_id": "t", "new_thread_id": "t2"})
        assert clash.is_error and "ALREADY_EXISTS" in clash.content[0].text
        history = await call(mcp_session, "get_history", thread_id="t")
        assert [m["content"] for m in history["messages"]] == ["hi"], "the server keeps serving after errors"


async def test_streamable_http_transport() -> None:
    h = await start_harness(make_settings())
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chatmem.mcp", "--target", f"127.0.0.1:{h.app.port}", "--workspace", h.ws,
        "--transport", "streamable-http", "--port", str(port),
        env=dict(os.environ), stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(100):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            except OSError:
                await asyncio.sleep(0.1)
        async with (
            streamable_http_client(f"http://127.0.0.1:{port}/mcp") as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            assert {t.name for t in (await session.list_tools()).tools} == TOOLS
            await call(session, "append_messages", thread_id="http", messages=[{"role": "user", "content": "hi"}])
            history = await call(session, "get_history", thread_id="http")
            assert [m["content"] for m in history["messages"]] == ["hi"]
    finally:
        proc.terminate()
        await proc.wait()
        await h.close()


async def test_the_credential_comes_from_the_environment_and_binds_the_workspace(tmp_path: pathlib.Path) -> None:
    settings = with_auth(make_settings(sqlite_path=str(tmp_path / "c.db")), mode="api_key", max_failures=1000)
    h = await start_harness(settings)
    try:
        key, _ = await create_key(h.app.store.keys, "acme", "write")
        async with stdio_session(h, workspace="", env={"CHATMEM_API_KEY": key}) as session:
            await call(session, "append_messages", thread_id="k", messages=[{"role": "user", "content": "hi"}])
        async with MemoryClient.connect(f"127.0.0.1:{h.app.port}", api_key=key, workspace_id="acme") as client:
            assert await client.get_history("k") == [{"role": "user", "content": "hi"}], "the key's workspace"
        async with stdio_session(h, workspace="", env={"CHATMEM_API_KEY": ""}) as session:
            refused = await session.call_tool("get_history", {"thread_id": "k"})
            assert refused.is_error and "UNAUTHENTICATED" in refused.content[0].text
        async with stdio_session(h, workspace="globex", env={"CHATMEM_API_KEY": key}) as session:
            foreign = await session.call_tool("get_history", {"thread_id": "k"})
            assert foreign.is_error and "PERMISSION_DENIED" in foreign.content[0].text
    finally:
        await h.close()
