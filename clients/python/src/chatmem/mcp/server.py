"""The chatmem MCP tools: thread memory and preferences over one chatmem client, with schemas and annotations."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Literal

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from chatmem._client import MemoryClient
from chatmem.errors import ChatmemError
from chatmem.types import Message, MessageInput, Thread, ToolCall, ToolResult

INSTRUCTIONS = (
    "Long-term memory for conversations: threads of messages (get_history, append_messages, fork_thread, "
    "truncate_thread, list_threads), a ready-made context block (get_context) and per-user preferences "
    "(get_preferences, set_preferences). Ids are letters, digits and _ - . : @."
)

ThreadId = Annotated[str, Field(description="The thread's id (1-128 of letters, digits and _ - . : @).")]
UserId = Annotated[str, Field(description="The user's id (1-128 of letters, digits and _ - . : @).")]

_READ = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False)


def _write(*, destructive: bool, idempotent: bool) -> ToolAnnotations:
    """Hints of a tool that changes memory; chatmem is a closed world (no tool reaches outside it)."""
    return ToolAnnotations(
        read_only_hint=False, destructive_hint=destructive, idempotent_hint=idempotent, open_world_hint=False
    )


class MessageIn(BaseModel):
    """A message to append."""

    role: Literal["user", "assistant", "system", "tool", "developer"] = Field(description="Who wrote it.")
    content: str = Field(description="The text.")
    name: str = Field("", description="An optional author name, such as a tool's.")


class MessageOut(BaseModel):
    """A stored message."""

    seq: int = Field(description="Its position in the thread (1, 2, 3, ...).")
    role: str
    content: str = Field(description="The text (tool calls and results are listed apart).")
    name: str = ""
    message_id: str = Field("", description="The id its writer gave it, or empty.")
    tool_calls: list[str] = Field(default_factory=list, description="Tool calls, as 'id name(arguments)'.")
    tool_call_ids: list[str] = Field(default_factory=list, description="The calls whose results it holds.")
    create_time: str = Field(description="When it was stored (ISO 8601, UTC).")


class History(BaseModel):
    """Messages of a thread, oldest first."""

    thread_id: str
    messages: list[MessageOut]


class ContextBlock(BaseModel):
    """A prompt block of recent conversation and user preferences."""

    text: str = Field(description="The block; empty when there is neither history nor preferences.")
    message_count: int
    preference_count: int


class Appended(BaseModel):
    """Where appended messages landed."""

    seqs: list[int]
    message_count: int = Field(description="The thread's length after the append.")
    durability: str = Field(description="'persisted' (in the store) or 'queued' (in the cache's outbox).")
    replayed: bool = Field(description="True when the request_id had been seen: nothing was stored again.")


class ThreadInfo(BaseModel):
    """A thread's metadata."""

    thread_id: str
    user_id: str
    title: str
    message_count: int
    last_seq: int
    create_time: str
    update_time: str
    parent_thread_id: str = Field("", description="The thread it was forked from, or empty.")
    fork_seq: int = Field(0, description="The parent's last seq the fork copied, or 0.")


class Threads(BaseModel):
    """One page of a user's threads, newest first."""

    threads: list[ThreadInfo]
    next_page_token: str = Field(description="Pass it as page_token for the next page; empty on the last.")


class Truncated(BaseModel):
    """What a truncate removed."""

    removed_count: int
    removed: list[MessageOut] = Field(description="The removed messages, oldest first (at most a page).")
    thread: ThreadInfo


class Preferences(BaseModel):
    """A user's preferences."""

    user_id: str
    preferences: dict[str, str]


class PreferencesSet(BaseModel):
    """How many preference keys were written."""

    written: int


@contextmanager
def _as_tool_errors() -> Iterator[None]:
    """Turn a chatmem error into a tool error (``isError``), whose text names the status and the cause."""
    try:
        yield
    except ChatmemError as error:
        raise ToolError(str(error)) from error


def _message(m: Message) -> MessageOut:
    return MessageOut(
        seq=m.seq,
        role=m.role,
        content=m.content,
        name=m.name,
        message_id=m.message_id,
        tool_calls=[f"{p.id} {p.name}({p.arguments})" for p in m.parts if isinstance(p, ToolCall)],
        tool_call_ids=[p.tool_call_id for p in m.parts if isinstance(p, ToolResult)],
        create_time=m.create_time.isoformat(),
    )


def _thread(t: Thread) -> ThreadInfo:
    return ThreadInfo(
        thread_id=t.thread_id,
        user_id=t.user_id,
        title=t.title,
        message_count=t.message_count,
        last_seq=t.last_seq,
        create_time=t.create_time.isoformat(),
        update_time=t.update_time.isoformat(),
        parent_thread_id=t.parent_thread_id,
        fork_seq=t.fork_seq,
    )


def build_server(client: MemoryClient, *, name: str = "chatmem") -> MCPServer:
    """Return an MCP server whose tools call ``client``.

    The workspace and the credential are the client's: no tool takes a workspace, so an MCP client
    reaches only what the chatmem credential may reach. A chatmem error (an unknown thread, a bad id)
    becomes a tool error result (``isError``) carrying the status and the server's message.

    Args:
        client: a connected client.
        name: the server's name, as MCP clients show it.

    Returns:
        The server; run it with ``run_stdio_async()`` or ``run_streamable_http_async(...)``.
    """
    server = MCPServer(name, instructions=INSTRUCTIONS)

    @server.tool(title="Get conversation context", annotations=_READ)
    async def get_context(
        thread_id: Annotated[str, Field(description="The thread; empty for none.")] = "",
        user_id: Annotated[str, Field(description="The user whose preferences to include; empty for none.")] = "",
        max_messages: Annotated[int, Field(ge=0, description="At most this many messages; 0: the window.")] = 0,
        max_chars: Annotated[int, Field(ge=0, description="At most this many characters; 0: no limit.")] = 0,
        max_tokens: Annotated[int | None, Field(ge=0, description="At most this many tokens; null: no limit.")] = None,
    ) -> ContextBlock:
        """Return a prompt block: the thread's recent messages, then the user's preferences."""
        with _as_tool_errors():
            ctx = await client.get_context(
                thread_id=thread_id,
                user_id=user_id,
                max_messages=max_messages,
                max_chars=max_chars,
                max_tokens=max_tokens,
            )
        return ContextBlock(text=ctx.text, message_count=ctx.message_count, preference_count=ctx.preference_count)

    @server.tool(
        title="Append messages",
        annotations=_write(destructive=False, idempotent=False),
    )
    async def append_messages(
        thread_id: ThreadId,
        messages: Annotated[list[MessageIn], Field(min_length=1, description="The messages, in order.")],
        user_id: Annotated[str, Field(description="The owner, when this append creates the thread.")] = "",
        title: Annotated[str, Field(description="The title, when this append creates the thread.")] = "",
        request_id: Annotated[str, Field(description="Repeat a call with the same id to store nothing twice.")] = "",
    ) -> Appended:
        """Append messages to a thread atomically and in order; the first append creates the thread."""
        inputs = [MessageInput(m.role, m.content, name=m.name) for m in messages]
        with _as_tool_errors():
            result = await client.append_messages(
                thread_id, inputs, user_id=user_id, title=title, request_id=request_id or None
            )
        return Appended(
            seqs=list(result.seqs),
            message_count=result.message_count,
            durability=result.durability,
            replayed=result.replayed,
        )

    @server.tool(title="Get thread history", annotations=_READ)
    async def get_history(
        thread_id: ThreadId,
        limit: Annotated[int, Field(ge=0, description="The newest this many messages; 0: the window (50).")] = 0,
        max_tokens: Annotated[int | None, Field(ge=0, description="At most this many tokens; null: no limit.")] = None,
    ) -> History:
        """Return a thread's recent messages, oldest first (an unknown thread has none)."""
        with _as_tool_errors():
            messages = await client.get_history(thread_id, limit=limit, max_tokens=max_tokens, typed=True)
        return History(thread_id=thread_id, messages=[_message(m) for m in messages])

    @server.tool(title="List a user's threads", annotations=_READ)
    async def list_threads(
        user_id: UserId,
        page_size: Annotated[int, Field(ge=0, le=1000, description="Threads per page; 0: 100.")] = 0,
        page_token: Annotated[str, Field(description="A previous page's next_page_token.")] = "",
    ) -> Threads:
        """Return one page of a user's threads, newest first."""
        with _as_tool_errors():
            # One page per call: the caller pages on with next_page_token.
            page = await anext(aiter(client.list_threads(user_id, page_size=page_size, page_token=page_token).pages()))
        return Threads(threads=[_thread(t) for t in page.items], next_page_token=page.next_page_token)

    @server.tool(
        title="Fork a thread",
        annotations=_write(destructive=False, idempotent=False),
    )
    async def fork_thread(
        thread_id: ThreadId,
        new_thread_id: Annotated[str, Field(description="The new thread's id; it must not exist.")],
        through_seq: Annotated[int | None, Field(ge=1, description="Copy up to this seq; null: all.")] = None,
        title: Annotated[str, Field(description="The new thread's title; empty keeps the source's.")] = "",
    ) -> ThreadInfo:
        """Create a new thread holding a copy of a thread's messages (all, or up to a seq)."""
        with _as_tool_errors():
            thread = await client.fork_thread(thread_id, new_thread_id, through_seq=through_seq, title=title)
        return _thread(thread)

    @server.tool(
        title="Truncate a thread",
        annotations=_write(destructive=True, idempotent=True),
    )
    async def truncate_thread(
        thread_id: ThreadId,
        after_seq: Annotated[int, Field(ge=0, description="Keep the messages up to this seq; 0 removes all.")],
        expected_last_seq: Annotated[
            int | None, Field(ge=0, description="Only if the thread's last seq is this; null: always.")
        ] = None,
    ) -> Truncated:
        """Remove (permanently) the messages after a seq, and return them."""
        with _as_tool_errors():
            done = await client.truncate_thread(thread_id, after_seq, expected_last_seq=expected_last_seq)
        return Truncated(
            removed_count=done.removed_count, removed=[_message(m) for m in done.removed], thread=_thread(done.thread)
        )

    @server.tool(title="Get user preferences", annotations=_READ)
    async def get_preferences(
        user_id: UserId,
        keys: Annotated[list[str], Field(description="Only these keys; empty: all.")] = [],  # noqa: B006 - never mutated
    ) -> Preferences:
        """Return a user's preferences (long-lived facts such as language or tone)."""
        with _as_tool_errors():
            values = await client.get_preferences(user_id, keys=keys)
        return Preferences(user_id=user_id, preferences=dict(values))

    @server.tool(
        title="Set user preferences",
        annotations=_write(destructive=True, idempotent=True),
    )
    async def set_preferences(
        user_id: UserId,
        preferences: Annotated[dict[str, str], Field(min_length=1, description="Keys to set (overwritten).")],
    ) -> PreferencesSet:
        """Set some of a user's preferences; a key that exists is overwritten."""
        with _as_tool_errors():
            written = await client.set_preferences(user_id, preferences)
        return PreferencesSet(written=written)

    return server
