"""OpenAI Agents SDK adapter: ChatmemSession keeps an agent's session items in a chatmem thread (extra agents)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

try:
    from agents.memory.session_settings import SessionSettings, resolve_session_limit
    from agents.models.fake_id import FAKE_RESPONSES_ID
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("chatmem.agents needs openai-agents: pip install 'chatmem[agents]'") from exc

from chatmem._client import MemoryClient
from chatmem._sync import SyncMemoryClient
from chatmem.errors import ConflictError
from chatmem.formats.responses import FORMAT, from_responses, to_responses, to_responses_items
from chatmem.types import Message, MessageInput

if TYPE_CHECKING:
    from agents.items import TResponseInputItem

__all__ = ["FORMAT", "ChatmemSession", "from_responses", "to_responses", "to_responses_items"]

T = TypeVar("T")

_MESSAGE_ID_FIELD = re.compile(r"^messages\[(\d+)\]\.message_id$")
_POP_ATTEMPTS = 5


class ChatmemSession:
    """An Agents SDK ``Session`` kept in a chatmem thread: pass it as ``Runner.run(..., session=...)``.

    Each item is one chatmem message stored with ``from_responses``: the item's exact JSON as the
    ``openai.responses`` envelope (so ``get_items`` returns dicts equal to what was added), its text,
    tool calls, tool results and reasoning as parts (so ``get_context``, token budgets and the other
    formats can read the thread), and its ``id`` as the message id.

    Item ids are not always unique: models served through Chat Completions give every item the SDK's
    placeholder id ``__fake_id__``, and the protocol's ``add_items`` appends whatever it is given. So a
    placeholder id is never used as a message id, and an item whose id the thread already holds (or
    that repeats in one call) is stored without a message id; the envelope keeps its id either way.

    Args:
        client: a ``MemoryClient``, or a ``SyncMemoryClient`` (its private loop runs the calls, so the
            session also works under ``Runner.run_sync``).
        session_id: the session's id, used as the thread id (letters, digits and ``_ - . : @``).
        user_id: the owner of the thread when the first items create it.
        session_settings: the SDK's settings; its ``limit`` is ``get_items``' default.
    """

    def __init__(
        self,
        client: MemoryClient | SyncMemoryClient,
        session_id: str,
        *,
        user_id: str = "",
        session_settings: SessionSettings | None = None,
    ) -> None:
        self.client = client
        self.session_id = session_id
        self.user_id = user_id
        self.session_settings = session_settings or SessionSettings()

    async def _call(self, call: Callable[[MemoryClient], Coroutine[Any, Any, T]]) -> T:
        if isinstance(self.client, SyncMemoryClient):
            sync = self.client
            return await asyncio.wrap_future(sync._submit(call(sync.aio)))
        return await call(self.client)

    async def get_items(self, limit: int | None = None) -> list[TResponseInputItem]:
        """Return the session's items, oldest first.

        Args:
            limit: the newest ``limit`` items; None uses ``session_settings.limit``, and if that is None
                too the whole thread, streamed in chunks.

        Returns:
            The items, each equal to the dict that was added.
        """
        limit = resolve_session_limit(limit, self.session_settings)
        if limit is not None and limit <= 0:
            return []
        thread_id = self.session_id

        async def read(client: MemoryClient) -> list[Message]:
            if limit is None:
                return [m async for m in client.stream_history(thread_id)]
            newest: list[Message] = []
            # ListMessages backwards: any limit works (GetHistory caps it at the server's page size).
            async for m in client.list_messages(thread_id, reverse=True, page_size=min(limit, 1000)):
                newest.append(m)
                if len(newest) == limit:
                    break
            return newest[::-1]

        items: list[Any] = to_responses_items(await self._call(read))
        return items

    async def add_items(self, items: list[TResponseInputItem]) -> None:
        """Append items to the session, all in one atomic call.

        Args:
            items: the items, in order (dicts, or the SDK's pydantic items).
        """
        if not items:
            return
        seen: set[str] = set()
        messages: list[MessageInput] = []
        for item in items:
            m = from_responses(item)
            if m.message_id == FAKE_RESPONSES_ID or m.message_id in seen:
                m = _without_id(m)
            seen.add(m.message_id)
            messages.append(m)
        thread_id, user_id = self.session_id, self.user_id

        async def append(client: MemoryClient) -> None:
            nonlocal messages
            # Each retry drops the ids the server named as taken (the failed append stored nothing), so
            # every retry sends fewer ids and the loop ends.
            while True:
                try:
                    await client.append_messages(thread_id, messages, user_id=user_id)
                    return
                except ConflictError as error:
                    taken = {i for i in _taken_indexes(error) if i < len(messages) and messages[i].message_id}
                    if not taken:
                        raise
                    messages = [_without_id(m) if i in taken else m for i, m in enumerate(messages)]

        await self._call(append)

    async def pop_item(self) -> TResponseInputItem | None:
        """Remove and return the newest item (TruncateThread), or None when the session is empty.

        The client's ``pop_message`` makes it safe against concurrent appends and pops.

        Raises:
            ConflictError: the thread kept changing while it tried.
        """
        thread_id = self.session_id

        async def pop(client: MemoryClient) -> Message | None:
            return await client.pop_message(thread_id)

        popped = await self._call(pop)
        if popped is None:
            return None
        items: list[Any] = to_responses(popped)
        return items[-1] if items else None

    async def clear_session(self) -> None:
        """Delete the thread and every item in it (nothing happens if it does not exist)."""
        thread_id = self.session_id
        await self._call(lambda client: client.clear(thread_id))


def _without_id(m: MessageInput) -> MessageInput:
    return MessageInput(
        role=m.role, content=m.content, parts=m.parts, envelope=m.envelope, token_count=m.token_count, message_id=""
    )


def _taken_indexes(error: ConflictError) -> set[int]:
    """Return the indexes of the messages whose ``message_id`` an ALREADY_EXISTS error names."""
    taken: set[int] = set()
    for detail in error.details:
        violations: Sequence[Any] = getattr(detail, "field_violations", ())
        for v in violations:
            match = _MESSAGE_ID_FIELD.match(str(v.field))
            if match:
                taken.add(int(match.group(1)))
    return taken
