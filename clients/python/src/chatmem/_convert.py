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
    Envelope,
    Media,
    Message,
    MessageInput,
    Part,
    Preference,
    Reasoning,
    Serving,
    TextPart,
    Thread,
    Tier,
    ToolCall,
    ToolResult,
)
from chatmem.v1 import resources_pb2, thread_memory_service_pb2

_ROLE_TO_PB = {
    "user": resources_pb2.ROLE_USER,
    "assistant": resources_pb2.ROLE_ASSISTANT,
    "system": resources_pb2.ROLE_SYSTEM,
    "tool": resources_pb2.ROLE_TOOL,
    "developer": resources_pb2.ROLE_DEVELOPER,
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


def part_to_pb(part: Part) -> resources_pb2.Part:
    """Convert a typed part to its protobuf form."""
    if isinstance(part, TextPart):
        return resources_pb2.Part(text=part.text)
    if isinstance(part, ToolCall):
        return resources_pb2.Part(
            tool_call=resources_pb2.ToolCall(id=part.id, name=part.name, arguments=part.arguments)
        )
    if isinstance(part, ToolResult):
        result = resources_pb2.ToolResult(
            tool_call_id=part.tool_call_id, parts=[part_to_pb(p) for p in part.parts], is_error=part.is_error
        )
        return resources_pb2.Part(tool_result=result)
    if isinstance(part, Reasoning):
        reasoning = resources_pb2.Reasoning(text=part.text, signature=part.signature, redacted=part.redacted)
        return resources_pb2.Part(reasoning=reasoning)
    media = resources_pb2.Media(uri=part.uri, mime_type=part.mime_type, size_bytes=part.size_bytes, data=part.data)
    return resources_pb2.Part(media=media)


def part(p: resources_pb2.Part) -> Part:
    """Convert a protobuf part to its typed form (an unset one, from a newer server, reads as empty text)."""
    kind = p.WhichOneof("kind")
    if kind == "tool_call":
        return ToolCall(id=p.tool_call.id, name=p.tool_call.name, arguments=p.tool_call.arguments)
    if kind == "tool_result":
        inner = tuple(q for q in (part(x) for x in p.tool_result.parts) if isinstance(q, TextPart | Media))
        return ToolResult(tool_call_id=p.tool_result.tool_call_id, parts=inner, is_error=p.tool_result.is_error)
    if kind == "reasoning":
        return Reasoning(text=p.reasoning.text, signature=p.reasoning.signature, redacted=p.reasoning.redacted)
    if kind == "media":
        m = p.media
        return Media(mime_type=m.mime_type, uri=m.uri, data=m.data, size_bytes=m.size_bytes)
    return TextPart(p.text)


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
    out = resources_pb2.MessageInput(
        role=role_to_pb(str(role), f"{where}.role"), content=content, name=name, metadata=dict(metadata)
    )
    if isinstance(m, MessageInput):
        out.parts.extend(part_to_pb(p) for p in m.parts)
        if m.envelope is not None:
            out.envelope.CopyFrom(resources_pb2.Envelope(format=m.envelope.format, raw=m.envelope.raw))
        out.message_id = m.message_id
        out.token_count = m.token_count
    return out


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
        parts=tuple(part(p) for p in m.parts),
        envelope=Envelope(m.envelope.format, m.envelope.raw) if m.HasField("envelope") else None,
        message_id=m.message_id,
        token_count=m.token_count,
        compacted=m.compacted,
        summarizes_through_seq=m.summarizes_through_seq,
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
        parent_thread_id=t.parent_thread_id,
        fork_seq=t.fork_seq,
        compacted_through_seq=t.compacted_through_seq,
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
