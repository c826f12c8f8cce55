"""Token budgets: which of a thread's newest messages fit, without splitting a tool call from its results.

A message costs its client-supplied ``token_count``, or else the estimate ``ceil(B / 4)`` (at least 1),
where B is the UTF-8 size of its text-bearing fields: text parts, tool call names and arguments, the
text parts of tool results and reasoning text, or ``content`` when the message has no parts. Media
count nothing: a client that sends images should send its own count.

The newest messages are taken in units: a message holding tool results brings every message back to
the calls they answer, so a call is never returned without its results nor a result without its call.
The walk stops at the first unit that does not fit, so the answer is the newest messages that fit.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from chatmem.v1 import resources_pb2

_QUARTER = 4
# The leading system and developer messages that keep_system_prefix keeps, at most.
MAX_PREFIX = 8
_PREFIX_ROLES = frozenset({resources_pb2.ROLE_SYSTEM, resources_pb2.ROLE_DEVELOPER})


def _text_bytes(parts: Sequence[resources_pb2.Part]) -> int:
    size = 0
    for part in parts:
        kind = part.WhichOneof("kind")
        if kind == "text":
            size += len(part.text.encode())
        elif kind == "tool_call":
            size += len(part.tool_call.name.encode()) + len(part.tool_call.arguments.encode())
        elif kind == "tool_result":
            size += _text_bytes(part.tool_result.parts)
        elif kind == "reasoning":
            size += len(part.reasoning.text.encode())
    return size


def estimate_tokens(message: resources_pb2.Message) -> int:
    """Return the documented estimate of a message's tokens: ceil(text bytes / 4), at least 1."""
    size = _text_bytes(message.parts) if message.parts else len(message.content.encode())
    return max(1, -(-size // _QUARTER))


def tokens(message: resources_pb2.Message) -> int:
    """Return a message's cost: the client's count when it gave one, else the estimate."""
    return message.token_count if message.token_count > 0 else estimate_tokens(message)


def _calls(message: resources_pb2.Message) -> Iterator[str]:
    for part in message.parts:
        if part.WhichOneof("kind") == "tool_call":
            yield part.tool_call.id


def _answers(message: resources_pb2.Message) -> Iterator[str]:
    for part in message.parts:
        if part.WhichOneof("kind") == "tool_result":
            yield part.tool_result.tool_call_id


@dataclass(frozen=True, slots=True)
class Selection:
    """The chosen messages (indexes, ascending), their cost, and whether older history might still fit.

    ``needs_more`` is True when the walk ran out of messages, not of budget, in a list that does not
    hold the whole thread: a longer read may add older messages (or find the call of a result).
    """

    kept: list[int]
    used: int
    needs_more: bool


def select(messages: Sequence[resources_pb2.Message], max_tokens: int, *, complete: bool) -> Selection:
    """Choose the newest messages that fit in ``max_tokens``, never splitting a call from its results.

    Args:
        messages: a thread's newest messages, oldest first.
        max_tokens: the budget.
        complete: True when nothing older can be read, so a result whose call is not in ``messages``
            is an orphan and is left out alone; False to stop there and report ``needs_more``.

    Returns:
        The selection.
    """
    call_at: dict[str, int] = {}
    for i, m in enumerate(messages):
        for call_id in _calls(m):
            call_at.setdefault(call_id, i)
    kept: list[int] = []
    used = 0
    i = len(messages) - 1
    while i >= 0:
        start, j, orphans = i, i, set()
        while j >= start:
            for call_id in _answers(messages[j]):
                at = call_at.get(call_id)
                if at is None or at > j:
                    if not complete:
                        return Selection(sorted(kept), used, True)
                    orphans.add(j)
                elif at < start:
                    start = at
            j -= 1
        unit = [k for k in range(start, i + 1) if k not in orphans]
        cost = sum(tokens(messages[k]) for k in unit)
        if used + cost > max_tokens:
            return Selection(sorted(kept), used, False)
        used += cost
        kept.extend(unit)
        i = start - 1
    return Selection(sorted(kept), used, not complete)


def leading_prefix(messages: Sequence[resources_pb2.Message]) -> int:
    """Return how many of the first messages (from the thread's start) are system or developer ones."""
    n = 0
    for m in messages[:MAX_PREFIX]:
        if m.role not in _PREFIX_ROLES:
            break
        n += 1
    return n


def fit_prefix(messages: Sequence[resources_pb2.Message], max_tokens: int) -> tuple[int, int]:
    """Return how many of the prefix messages fit whole, in order, and what they cost."""
    used = 0
    for n, m in enumerate(messages):
        cost = tokens(m)
        if used + cost > max_tokens:
            return n, used
        used += cost
    return len(messages), used
