"""LangChain adapter: ChatmemChatMessageHistory keeps a LangChain chat history in a chatmem thread (extra langchain)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

try:
    from langchain_core.chat_history import BaseChatMessageHistory
    from langchain_core.messages import (
        AIMessage,
        BaseMessage,
        ChatMessage,
        HumanMessage,
        SystemMessage,
        ToolMessage,
    )
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("chatmem.langchain needs langchain-core: pip install 'chatmem[langchain]'") from exc

from chatmem._client import MemoryClient
from chatmem._sync import SyncMemoryClient
from chatmem.types import Message

TOOL_CALL_ID_KEY = "lc_tool_call_id"
"""The message metadata key that keeps a ToolMessage's ``tool_call_id``."""

TOOL_CALLS_KEY = "lc_tool_calls"
"""The message metadata key that keeps an AIMessage's ``tool_calls``, as JSON."""

_ROLE_OF_TYPE = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool"}
_ROLE_OF_CHAT_ROLE = {"human": "user", "user": "user", "ai": "assistant", "assistant": "assistant", "system": "system"}


def to_chatmem(message: BaseMessage) -> dict[str, Any]:
    """Convert a LangChain message to the client's message dict (role, content, name, metadata).

    Content given as a list of blocks is stored as its text. A ToolMessage's ``tool_call_id`` and an
    AIMessage's ``tool_calls`` are kept in the metadata, so that they come back.

    Args:
        message: the message.

    Returns:
        The dict ``MemoryClient.append_messages`` takes.

    Raises:
        ValueError: a ChatMessage with a role chatmem does not have.
    """
    if isinstance(message, ChatMessage):
        role = _ROLE_OF_CHAT_ROLE.get(message.role.lower())
    else:
        role = _ROLE_OF_TYPE.get(message.type)
    if role is None:
        raise ValueError(f"chatmem cannot store a {message.type!r} message (role {getattr(message, 'role', '')!r})")
    content = message.content if isinstance(message.content, str) else str(message.text)
    metadata: dict[str, str] = {}
    if isinstance(message, ToolMessage):
        metadata[TOOL_CALL_ID_KEY] = message.tool_call_id
    if isinstance(message, AIMessage) and message.tool_calls:
        metadata[TOOL_CALLS_KEY] = json.dumps(message.tool_calls)
    return {"role": role, "content": content, "name": message.name or "", "metadata": metadata}


def to_langchain(message: Message) -> BaseMessage:
    """Convert a stored message to the LangChain message of its role.

    Args:
        message: the stored message.

    Returns:
        A HumanMessage, AIMessage, SystemMessage or ToolMessage.
    """
    name = message.name or None
    if message.role == "user":
        return HumanMessage(content=message.content, name=name)
    if message.role == "assistant":
        tool_calls = json.loads(message.metadata.get(TOOL_CALLS_KEY, "[]"))
        return AIMessage(content=message.content, name=name, tool_calls=tool_calls)
    if message.role == "system":
        return SystemMessage(content=message.content, name=name)
    if message.role == "tool":
        return ToolMessage(content=message.content, name=name, tool_call_id=message.metadata.get(TOOL_CALL_ID_KEY, ""))
    return ChatMessage(content=message.content, role=message.role, name=name)


class ChatmemChatMessageHistory(BaseChatMessageHistory):
    """A LangChain chat history kept in a chatmem thread, for ``RunnableWithMessageHistory`` and friends.

    With a ``SyncMemoryClient`` every method works: the sync ones block, and the async ones
    (``aget_messages``, ``aadd_messages``, ``aclear``) run on the client's private loop without blocking
    the caller's. With a ``MemoryClient`` only the async methods work (use ``ainvoke``); the sync ones
    raise RuntimeError rather than block the event loop.

    ``messages`` is the thread's recent window (``limit`` newest messages, oldest first), which keeps
    prompts bounded however long the thread grows; the whole thread stays stored.

    Args:
        client: the client.
        thread_id: the thread, typically the session id.
        user_id: the owner of the thread when the first messages create it.
        limit: how many of the newest messages ``messages`` returns; 0 means the server's window (50).
    """

    def __init__(
        self, client: SyncMemoryClient | MemoryClient, thread_id: str, *, user_id: str | None = None, limit: int = 0
    ) -> None:
        super().__init__()
        self.client = client
        self.thread_id = thread_id
        self.user_id = user_id or ""
        self.limit = limit

    def _blocking(self, what: str) -> SyncMemoryClient:
        if isinstance(self.client, SyncMemoryClient):
            return self.client
        raise RuntimeError(
            f"ChatmemChatMessageHistory.{what} blocks, so it needs a SyncMemoryClient; with a MemoryClient "
            "use the async methods (aget_messages, aadd_messages, aclear), e.g. through ainvoke()."
        )

    async def _history(self) -> list[Message]:
        if isinstance(self.client, SyncMemoryClient):
            sync = self.client
            return await asyncio.wrap_future(
                sync._submit(sync.aio.get_history(self.thread_id, limit=self.limit, typed=True))
            )
        return await self.client.get_history(self.thread_id, limit=self.limit, typed=True)

    # BaseChatMessageHistory declares `messages` as a plain attribute; reading it here makes a call.
    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        """The thread's recent window, oldest first, as LangChain messages."""
        history = self._blocking("messages").get_history(self.thread_id, limit=self.limit, typed=True)
        return [to_langchain(m) for m in history]

    async def aget_messages(self) -> list[BaseMessage]:
        """Return the thread's recent window, oldest first, as LangChain messages."""
        return [to_langchain(m) for m in await self._history()]

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        """Append messages to the thread, all in one atomic call.

        Args:
            messages: the messages, in order.
        """
        if messages:
            self._blocking("add_messages").append_messages(
                self.thread_id, [to_chatmem(m) for m in messages], user_id=self.user_id
            )

    async def aadd_messages(self, messages: Sequence[BaseMessage]) -> None:
        """Append messages to the thread, all in one atomic call.

        Args:
            messages: the messages, in order.
        """
        if not messages:
            return
        converted = [to_chatmem(m) for m in messages]
        if isinstance(self.client, SyncMemoryClient):
            sync = self.client
            await asyncio.wrap_future(
                sync._submit(sync.aio.append_messages(self.thread_id, converted, user_id=self.user_id))
            )
        else:
            await self.client.append_messages(self.thread_id, converted, user_id=self.user_id)

    def clear(self) -> None:
        """Delete the thread (nothing happens if it does not exist)."""
        self._blocking("clear").clear(self.thread_id)

    async def aclear(self) -> None:
        """Delete the thread (nothing happens if it does not exist)."""
        if isinstance(self.client, SyncMemoryClient):
            sync = self.client
            await asyncio.wrap_future(sync._submit(sync.aio.clear(self.thread_id)))
        else:
            await self.client.clear(self.thread_id)
