"""The small typed objects the client returns and accepts, free of protobuf."""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeAlias, TypeVar

T = TypeVar("T")

Role = Literal["user", "assistant", "system", "tool", "developer"]
"""Who wrote a message, as the seeds' ``{"role": ..., "content": ...}`` dicts spell it."""

Tier = Literal["cache", "store", "unspecified"]
"""The storage tier that served a read: the Redis window or the durable store."""

Durability = Literal["persisted", "queued", "unspecified"]
"""How safe an acknowledged write is."""


@dataclass(frozen=True, slots=True)
class TextPart:
    """Plain text.

    Attributes:
        text: the text.
    """

    text: str


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A tool invocation the model asked for.

    Attributes:
        id: the call's id, which its result names.
        name: the tool's name.
        arguments: the arguments exactly as the model produced them (usually a JSON object as text).
    """

    id: str
    name: str
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class Media:
    """An image, audio clip or file: by reference (``uri``) or, when small, inline (``data``).

    Attributes:
        mime_type: the IANA media type, for example ``image/png``.
        uri: where the content lives (``https:``, ``gs:``, a provider's file id ...).
        data: the content inline, only under the server's inline limit (64 KiB by default).
        size_bytes: the content's size, when known; 0 otherwise.
    """

    mime_type: str
    uri: str = ""
    data: bytes = b""
    size_bytes: int = 0


@dataclass(frozen=True, slots=True)
class ToolResult:
    """What a tool returned for a call.

    Attributes:
        tool_call_id: the id of the call it answers.
        parts: the result's own parts, text and media only.
        is_error: True when the tool failed.
    """

    tool_call_id: str
    parts: tuple[TextPart | Media, ...] = ()
    is_error: bool = False

    @property
    def text(self) -> str:
        """The concatenation of the result's text parts."""
        return "".join(p.text for p in self.parts if isinstance(p, TextPart))


@dataclass(frozen=True, slots=True)
class Reasoning:
    """The model's reasoning ("thinking"), kept opaque where the provider signs or redacts it.

    Attributes:
        text: the reasoning text; empty when redacted.
        signature: the provider's signature, or the encrypted blob when redacted, byte for byte.
        redacted: True when the provider withheld the text.
    """

    text: str = ""
    signature: bytes = b""
    redacted: bool = False


Part: TypeAlias = TextPart | ToolCall | ToolResult | Reasoning | Media
"""One ordered piece of a message."""


@dataclass(frozen=True, slots=True)
class Envelope:
    """A message in its framework's own format, kept byte for byte.

    Attributes:
        format: ``openai.chat``, ``openai.responses``, ``anthropic`` or ``langchain``.
        raw: the original JSON as UTF-8 bytes.
    """

    format: str
    raw: bytes


@dataclass(frozen=True, slots=True)
class MessageInput:
    """A message to append.

    Attributes:
        role: who wrote it.
        content: the text; may be empty (for example a tool-call turn). With text parts it must be empty
            or equal their concatenation: the server fills it.
        name: optional author name, such as a tool's.
        metadata: free-form string metadata, bounded in total size by the server.
        parts: the ordered parts (text, tool calls, tool results, reasoning, media); empty for plain text.
        envelope: the original message in its framework's format, returned byte for byte; None for none.
        message_id: a client-chosen id, unique in the thread (a repeat is ``ConflictError``); ``""``: none.
        token_count: the message's size in tokens as the client counted it; 0 lets the server estimate it.
    """

    role: Role
    content: str = ""
    name: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    parts: Sequence[Part] = ()
    envelope: Envelope | None = None
    message_id: str = ""
    token_count: int = 0


@dataclass(frozen=True, slots=True)
class Message:
    """A stored message of a thread.

    Attributes:
        seq: position in the thread: 1, 2, 3, ... in acknowledgement order.
        role: ``user``, ``assistant``, ``system``, ``tool`` or ``developer``.
        content: the text (with parts: their text parts joined).
        name: the optional author name, or ``""``.
        metadata: the message's string metadata.
        create_time: when the server accepted it (UTC).
        thread_id: the thread that holds it.
        workspace_id: the workspace that owns the thread.
        parts: the ordered parts as appended; empty for a plain-text message.
        envelope: the original message as appended, byte for byte; None when none was given.
        message_id: the client-chosen id, or ``""``.
        token_count: the client's token count, or 0 (budgets then use the server's estimate).
        compacted: True (in list and stream reads) when a CompactThread summary stands in for it.
        summarizes_through_seq: on a summary, the seq up to which it stands in for the messages; else 0.
    """

    seq: int
    role: str
    content: str
    name: str
    metadata: Mapping[str, str]
    create_time: datetime.datetime
    thread_id: str
    workspace_id: str
    parts: Sequence[Part] = ()
    envelope: Envelope | None = None
    message_id: str = ""
    token_count: int = 0
    compacted: bool = False
    summarizes_through_seq: int = 0

    def to_dict(self) -> dict[str, str]:
        """Return the seeds' chat-history form, ``{"role": ..., "content": ...}``."""
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True, slots=True)
class Serving:
    """How the server answered a request, so that degradation is visible.

    Attributes:
        tier: the tier that served a read (``unspecified`` for writes and empty answers).
        degraded: True when a tier was down and the server fell back to another.
    """

    tier: Tier
    degraded: bool


_UNREPORTED = Serving(tier="unspecified", degraded=False)


class ServedList(list[T]):
    """A plain list of results that also says how the server served them (``.serving``).

    It is a real ``list``: it compares equal to one, serialises like one and goes wherever one goes,
    such as the seeds' chat-config history.
    """

    serving: Serving

    def __init__(self, items: Iterable[T] = (), serving: Serving = _UNREPORTED) -> None:
        super().__init__(items)
        self.serving = serving


class ServedDict(dict[str, str]):
    """A plain ``dict`` of results that also says how the server served them (``.serving``)."""

    serving: Serving

    def __init__(self, items: Mapping[str, str] | None = None, serving: Serving = _UNREPORTED) -> None:
        super().__init__(items or {})
        self.serving = serving


@dataclass(frozen=True, slots=True)
class AppendResult:
    """Where appended messages landed.

    Attributes:
        seqs: the seq of each appended message, in request order.
        message_count: the thread's length after the append.
        durability: how safe the write is now.
        replayed: True when the server returned the result of an earlier call with the same request id.
        serving: how the request was served.
        request_id: the request id the call carried; pass it again to retry the same append safely.
    """

    seqs: tuple[int, ...]
    message_count: int
    durability: Durability
    replayed: bool
    serving: Serving
    request_id: str


@dataclass(frozen=True, slots=True)
class UserDeletion:
    """What ``delete_user`` deleted.

    Attributes:
        threads: how many threads were deleted.
        messages: how many messages were deleted from the durable store (messages still queued for it in
            ``write_behind`` mode are deleted too, but not counted).
        preferences: how many preference keys were deleted.
        serving: how the request was served.
    """

    threads: int
    messages: int
    preferences: int
    serving: Serving


@dataclass(frozen=True, slots=True)
class Thread:
    """A conversation's metadata.

    Attributes:
        thread_id: the thread's id.
        workspace_id: the workspace that owns it.
        user_id: the owning user, or ``""``.
        title: a human-readable title, or ``""``.
        ttl: idle time after which the thread's window leaves the cache (the history stays stored).
        pinned: True when the cached window never expires.
        message_count: the number of messages.
        last_seq: the seq of the newest message.
        create_time: when the first append created it (UTC).
        update_time: when it last changed (UTC).
        parent_thread_id: the thread it was forked from, or ``""``.
        fork_seq: the parent's last seq the fork copied, or 0.
        compacted_through_seq: a summary stands in for the messages up to this seq in the window, or 0.
    """

    thread_id: str
    workspace_id: str
    user_id: str
    title: str
    ttl: datetime.timedelta
    pinned: bool
    message_count: int
    last_seq: int
    create_time: datetime.datetime
    update_time: datetime.datetime
    parent_thread_id: str = ""
    fork_seq: int = 0
    compacted_through_seq: int = 0


@dataclass(frozen=True, slots=True)
class Truncation:
    """What ``truncate_thread`` removed.

    Attributes:
        removed: the removed messages, oldest first (at most the server's page size of the newest).
        removed_count: how many messages were removed.
        thread: the thread after the truncate (its ``last_seq`` does not go down: seqs are never reused).
    """

    removed: tuple[Message, ...]
    removed_count: int
    thread: Thread


@dataclass(frozen=True, slots=True)
class Preference:
    """One long-lived fact or preference of a user.

    Attributes:
        key: the key, for example ``language``.
        value: the value, for example ``French``.
        update_time: when the key was last set (UTC).
    """

    key: str
    value: str
    update_time: datetime.datetime


@dataclass(frozen=True, slots=True)
class Context:
    """A ready-made prompt block.

    Attributes:
        text: ``Previous conversation:`` with ``role: content`` lines, then ``User preferences:`` with
            ``key: value`` lines; ``""`` when there is neither.
        message_count: how many messages the block holds.
        preference_count: how many preferences the block holds.
        serving: how the request was served.
    """

    text: str
    message_count: int
    preference_count: int
    serving: Serving

    def __str__(self) -> str:
        return self.text
