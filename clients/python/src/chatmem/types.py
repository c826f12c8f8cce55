"""The small typed objects the client returns and accepts, free of protobuf."""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeVar

T = TypeVar("T")

Role = Literal["user", "assistant", "system", "tool"]
"""Who wrote a message, as the seeds' ``{"role": ..., "content": ...}`` dicts spell it."""

Tier = Literal["cache", "store", "unspecified"]
"""The storage tier that served a read: the Redis window or the durable store."""

Durability = Literal["persisted", "queued", "unspecified"]
"""How safe an acknowledged write is."""


@dataclass(frozen=True, slots=True)
class MessageInput:
    """A message to append.

    Attributes:
        role: who wrote it.
        content: the text; may be empty (for example a tool-call turn).
        name: optional author name, such as a tool's.
        metadata: free-form string metadata, bounded in total size by the server.
    """

    role: Role
    content: str = ""
    name: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Message:
    """A stored message of a thread.

    Attributes:
        seq: position in the thread: 1, 2, 3, ... in acknowledgement order.
        role: ``user``, ``assistant``, ``system`` or ``tool``.
        content: the text.
        name: the optional author name, or ``""``.
        metadata: the message's string metadata.
        create_time: when the server accepted it (UTC).
        thread_id: the thread that holds it.
        workspace_id: the workspace that owns the thread.
    """

    seq: int
    role: str
    content: str
    name: str
    metadata: Mapping[str, str]
    create_time: datetime.datetime
    thread_id: str
    workspace_id: str

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
