"""ThreadContextProvider: an agent's memory in two calls, invoking() before the model and invoked() after it."""

from __future__ import annotations

import logging

from chatmem._client import MemoryClient
from chatmem.errors import DeadlineExceededError, UnavailableError

log = logging.getLogger(__name__)

# The failures that mean "memory is out of reach right now"; anything else is a bug worth raising.
_UNREACHABLE = (UnavailableError, DeadlineExceededError)


class ThreadContextProvider:
    """The seeds' Context Provider pattern over a chatmem server.

    Before each model call, ``invoking()`` returns the prompt block: ``Previous conversation:`` with
    the thread's recent ``role: content`` lines, then ``User preferences:`` with the user's
    ``key: value`` lines. After it, ``invoked(user_message, assistant_message)`` stores the exchange.
    Without a ``thread_id`` there is no thread memory (nothing is read or stored); without a
    ``user_id`` there are no preferences.

    If the server cannot be reached (UNAVAILABLE, or no answer before ``timeout``) both methods log a
    warning and carry on: ``invoking()`` returns ``""`` and ``invoked()`` stores nothing, so the agent
    runs stateless instead of failing. Other errors, such as an invalid id, are raised.

    Args:
        client: the async client.
        thread_id: the conversation to remember; None for none.
        user_id: the user whose preferences to include, and who owns a new thread; None for none.
        max_messages: at most this many recent messages in the block; 0 means the server's window.
        max_chars: at most this many characters in the block (whole lines only); 0 means no limit.
        max_tokens: at most this many tokens of messages (see ``MemoryClient.get_context``); None: no budget.
        timeout: the deadline of each call in seconds, retries included; keep it short, since the
            agent waits for it on every turn.
    """

    def __init__(
        self,
        client: MemoryClient,
        *,
        thread_id: str | None = None,
        user_id: str | None = None,
        max_messages: int = 0,
        max_chars: int = 0,
        max_tokens: int | None = None,
        timeout: float = 1.0,
    ) -> None:
        self._client = client
        self.thread_id = thread_id
        self.user_id = user_id
        self.max_messages = max_messages
        self.max_chars = max_chars
        self.max_tokens = max_tokens
        self.timeout = timeout

    async def invoking(self) -> str:
        """Return the context block for the next model call.

        Returns:
            The block, or ``""`` when there is nothing to remember, no thread and no user, or the
            server is unreachable (then a warning is logged).
        """
        if not self.thread_id and not self.user_id:
            return ""
        try:
            context = await self._client.get_context(
                thread_id=self.thread_id,
                user_id=self.user_id,
                max_messages=self.max_messages,
                max_chars=self.max_chars,
                max_tokens=self.max_tokens,
                timeout=self.timeout,
            )
        except _UNREACHABLE as exc:
            log.warning("chatmem unreachable; running without memory this turn: %s", exc)
            return ""
        return context.text

    async def invoked(self, user_message: str, assistant_message: str) -> None:
        """Store one exchange (the user's message and the reply) in the thread, atomically.

        Does nothing without a ``thread_id``. If the server is unreachable the exchange is not stored
        and a warning is logged.

        Args:
            user_message: what the user said.
            assistant_message: what the model answered.
        """
        if not self.thread_id:
            return
        try:
            await self._client.append_messages(
                self.thread_id,
                [{"role": "user", "content": user_message}, {"role": "assistant", "content": assistant_message}],
                user_id=self.user_id or "",
                timeout=self.timeout,
            )
        except _UNREACHABLE as exc:
            log.warning("chatmem unreachable; this exchange was not stored: %s", exc)
