"""Conversions between the generated chatmem.v1 messages and the client's typed objects."""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf import duration_pb2, timestamp_pb2

from chatmem.errors import FieldViolation, InvalidArgumentError
from chatmem.types import (
    AppendResult,
    Context,
    Durability,
    Message,
    MessageInput,
    Preference,
    Serving,
    Thread,
    Tier,
)
from chatmem.v1 import resources_pb2, thread_memory_service_pb2

_ROLE_TO_PB = {
    "user": resources_pb2.ROLE_USER,
    "assistant": resources_pb2.ROLE_ASSISTANT,
    "system": resources_pb2.ROLE_SYSTEM,
    "tool": resources_pb2.ROLE_TOOL,
}
_ROLE_FROM_PB = {v: k for k, v in _ROLE_TO_PB.items()}
_TIERS: dict[int, Tier] = {resources_pb2.TIER_CACHE: "cache", resources_pb2.TIER_STORE: "store"}
_DURABILITIES: dict[int, Durability] = {
    resources_pb2.DURABILITY_PERSISTED: "persisted",
    resources_pb2.DURABILITY_QUEUED: "queued",
}
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def _invalid(path: str, problem: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"invalid {path}: {problem}", violations=(FieldViolation(path, problem),))


def role_to_pb(role: str, where: str = "role") -> resources_pb2.Role.ValueType:
    """Return the enum value of a role name; an unknown one is an InvalidArgumentError naming ``where``."""
    try:
        return _ROLE_TO_PB[role]
    except KeyError:
        problem = f"unknown role {role!r}; expected one of {', '.join(_ROLE_TO_PB)}"
        raise _invalid(where, problem) from None


def message_input(m: MessageInput | Mapping[str, Any], where: str) -> resources_pb2.MessageInput:
    """Build a MessageInput from the typed form or a seeds-style ``{"role", "content"}`` dict."""
    if isinstance(m, MessageInput):
        role, content, name, metadata = m.role, m.content, m.name, m.metadata
    else:
        role, content = m.get("role", ""), m.get("content", "")
        name, metadata = m.get("name") or "", m.get("metadata") or {}
    if not isinstance(content, str):
        problem = f"must be a str, not {type(content).__name__}"
        raise _invalid(f"{where}.content", problem)
    return resources_pb2.MessageInput(
        role=role_to_pb(str(role), f"{where}.role"), content=content, name=name, metadata=dict(metadata)
    )


def message_inputs(messages: Iterable[MessageInput | Mapping[str, Any]]) -> list[resources_pb2.MessageInput]:
    """Build the messages of an append, naming a bad one by its index."""
    return [message_input(m, f"messages[{i}]") for i, m in enumerate(messages)]


def timestamp(ts: timestamp_pb2.Timestamp) -> datetime.datetime:
    """Convert a Timestamp to an aware UTC datetime."""
    return _EPOCH + datetime.timedelta(seconds=ts.seconds, microseconds=ts.nanos // 1000)


def duration_to_pb(value: datetime.timedelta | float) -> duration_pb2.Duration:
    """Convert a timedelta or a number of seconds to a Duration (whole microseconds)."""
    seconds = value.total_seconds() if isinstance(value, datetime.timedelta) else float(value)
    out = duration_pb2.Duration()
    out.FromMicroseconds(round(seconds * 1_000_000))
    return out


def serving(s: resources_pb2.ServingInfo) -> Serving:
    """Convert a ServingInfo."""
    return Serving(tier=_TIERS.get(s.tier, "unspecified"), degraded=s.degraded)


def message(m: resources_pb2.Message) -> Message:
    """Convert a stored message."""
    return Message(
        seq=m.seq,
        role=_ROLE_FROM_PB.get(m.role, "unspecified"),
        content=m.content,
        name=m.name,
        metadata=dict(m.metadata),
        create_time=timestamp(m.create_time),
        thread_id=m.thread_id,
        workspace_id=m.workspace_id,
    )


def history_dict(m: resources_pb2.Message) -> dict[str, str]:
    """Return the seeds' chat-history form of a stored message, without building a Message first."""
    return {"role": _ROLE_FROM_PB.get(m.role, "unspecified"), "content": m.content}


def thread(t: resources_pb2.Thread) -> Thread:
    """Convert a thread."""
    return Thread(
        thread_id=t.thread_id,
        workspace_id=t.workspace_id,
        user_id=t.user_id,
        title=t.title,
        ttl=datetime.timedelta(seconds=t.ttl.seconds, microseconds=t.ttl.nanos // 1000),
        pinned=t.pinned,
        message_count=t.message_count,
        last_seq=t.last_seq,
        create_time=timestamp(t.create_time),
        update_time=timestamp(t.update_time),
    )


def preference(p: resources_pb2.Preference) -> Preference:
    """Convert a preference."""
    return Preference(key=p.key, value=p.value, update_time=timestamp(p.update_time))


def append_result(r: thread_memory_service_pb2.AppendMessagesResponse, request_id: str) -> AppendResult:
    """Convert an AppendMessages response."""
    return AppendResult(
        seqs=tuple(r.seqs),
        message_count=r.message_count,
        durability=_DURABILITIES.get(r.durability, "unspecified"),
        replayed=r.replayed,
        serving=serving(r.serving),
        request_id=request_id,
    )


def context(r: thread_memory_service_pb2.GetContextResponse) -> Context:
    """Convert a GetContext response."""
    return Context(
        text=r.context, message_count=r.message_count, preference_count=r.preference_count, serving=serving(r.serving)
    )
