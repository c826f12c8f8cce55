"""LangChain adapter: ChatmemChatMessageHistory, and the converters of chatmem.formats.langchain (extra langchain)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

try:
    from langchain_core.chat_history import BaseChatMessageHistory
    from langchain_core.messages import BaseMessage
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("chatmem.langchain needs langchain-core: pip install 'chatmem[langchain]'") from exc

from chatmem._client import MemoryClient
from chatmem._sync import SyncMemoryClient
from chatmem.formats.langchain import (
    FORMAT,
    TOOL_CALL_ID_KEY,
    TOOL_CALLS_KEY,
    from_langchain,
    role_of,
    to_chatmem,
    to_langchain,
    to_langchain_messages,
)
from chatmem.types import Message

__all__ = [
    "FORMAT",
    "TOOL_CALLS_KEY",
    "TOOL_CALL_ID_KEY",
    "ChatmemChatMessageHistory",
    "from_langchain",
    "role_of",
    "to_chatmem",
    "to_langchain",
    "to_langchain_messages",
]


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
        return to_langchain_messages(history)

    async def aget_messages(self) -> list[BaseMessage]:
        """Return the thread's recent window, oldest first, as LangChain messages."""
        return to_langchain_messages(await self._history())

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        """Append messages to the thread, all in one atomic call.

        Args:
            messages: the messages, in order.
        """
        if messages:
            self._blocking("add_messages").append_messages(
                self.thread_id, [from_langchain(m) for m in messages], user_id=self.user_id
            )

    async def aadd_messages(self, messages: Sequence[BaseMessage]) -> None:
        """Append messages to the thread, all in one atomic call.

        Args:
            messages: the messages, in order.
        """
        if not messages:
            return
        converted = [from_langchain(m) for m in messages]
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
