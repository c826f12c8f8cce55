"""The CLI's JSON forms of messages, threads and parts, and the way back from an exported line to a MessageInput."""

from __future__ import annotations

import base64
import binascii
import datetime
import json
from collections.abc import Mapping
from typing import Any, cast

from chatmem.types import (
    Envelope,
    Media,
    Message,
    MessageInput,
    Part,
    Reasoning,
    Role,
    TextPart,
    Thread,
    ToolCall,
    ToolResult,
)

ROLES = ("user", "assistant", "system", "tool", "developer")


class LineError(ValueError):
    """An input line that is not an exported message; the message says which line and what is wrong."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _time(value: datetime.datetime) -> str:
    # Microseconds and a Z, so that the field sorts as text and round-trips through datetime.fromisoformat.
    return value.astimezone(datetime.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def part_to_json(part: Part) -> dict[str, Any]:
    """Return a part as a one-key object named after its kind, bytes in base64 (the protobuf JSON shape)."""
    if isinstance(part, TextPart):
        return {"text": part.text}
    if isinstance(part, ToolCall):
        return {"tool_call": {"id": part.id, "name": part.name, "arguments": part.arguments}}
    if isinstance(part, ToolResult):
        inner = [part_to_json(p) for p in part.parts]
        return {"tool_result": {"tool_call_id": part.tool_call_id, "parts": inner, "is_error": part.is_error}}
    if isinstance(part, Reasoning):
        return {"reasoning": {"text": part.text, "signature": _b64(part.signature), "redacted": part.redacted}}
    media = {"mime_type": part.mime_type, "uri": part.uri, "data": _b64(part.data), "size_bytes": part.size_bytes}
    return {"media": media}


def message_to_json(m: Message) -> dict[str, Any]:
    """Return every field of a stored message as a JSON-ready dict (one line of an export).

    Args:
        m: the message.

    Returns:
        ``seq``, ``role``, ``content``, ``name``, ``metadata``, ``create_time`` (RFC 3339, UTC),
        ``thread_id``, ``workspace_id``, ``parts``, ``envelope`` (``{"format", "raw"}`` with ``raw`` in
        base64, or null), ``message_id``, ``token_count``, ``compacted`` and ``summarizes_through_seq``.
    """
    envelope = None if m.envelope is None else {"format": m.envelope.format, "raw": _b64(m.envelope.raw)}
    return {
        "seq": m.seq,
        "role": m.role,
        "content": m.content,
        "name": m.name,
        "metadata": dict(m.metadata),
        "create_time": _time(m.create_time),
        "thread_id": m.thread_id,
        "workspace_id": m.workspace_id,
        "parts": [part_to_json(p) for p in m.parts],
        "envelope": envelope,
        "message_id": m.message_id,
        "token_count": m.token_count,
        "compacted": m.compacted,
        "summarizes_through_seq": m.summarizes_through_seq,
    }


def message_line(m: Message) -> str:
    """Return a message as one JSON Lines line, newline included (non-ASCII kept as UTF-8)."""
    return json.dumps(message_to_json(m), ensure_ascii=False, separators=(",", ":")) + "\n"


def thread_to_json(t: Thread) -> dict[str, Any]:
    """Return a thread's metadata as a JSON-ready dict (``ttl`` in seconds, times in RFC 3339 UTC)."""
    return {
        "thread_id": t.thread_id,
        "workspace_id": t.workspace_id,
        "user_id": t.user_id,
        "title": t.title,
        "ttl_seconds": t.ttl.total_seconds(),
        "pinned": t.pinned,
        "message_count": t.message_count,
        "last_seq": t.last_seq,
        "create_time": _time(t.create_time),
        "update_time": _time(t.update_time),
        "parent_thread_id": t.parent_thread_id,
        "fork_seq": t.fork_seq,
        "compacted_through_seq": t.compacted_through_seq,
    }


def _obj(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise LineError(f"{where} must be an object")
    return value


def _field(obj: Mapping[str, Any], key: str, kind: type, where: str, default: Any) -> Any:
    value = obj.get(key, default)
    if value is None:
        return default
    # bool is an int in Python; a count of true is a mistake in the input, not a number.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise LineError(f"{where}.{key} must be a {'string' if kind is str else kind.__name__}")
    return value


def _unb64(obj: Mapping[str, Any], key: str, where: str) -> bytes:
    text = _field(obj, key, str, where, "")
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        raise LineError(f"{where}.{key} is not base64") from None


def part_from_json(value: Any, where: str) -> Part:
    """Return the typed part of ``part_to_json``'s form; LineError naming ``where`` if it is not one."""
    obj = _obj(value, where)
    if len(obj) != 1:
        raise LineError(f"{where} must have exactly one of text, tool_call, tool_result, reasoning, media")
    kind, body = next(iter(obj.items()))
    if kind == "text":
        if not isinstance(body, str):
            raise LineError(f"{where}.text must be a string")
        return TextPart(body)
    at = f"{where}.{kind}"
    body = _obj(body, at)
    if kind == "tool_call":
        return ToolCall(
            id=_field(body, "id", str, at, ""),
            name=_field(body, "name", str, at, ""),
            arguments=_field(body, "arguments", str, at, ""),
        )
    if kind == "tool_result":
        inner = [part_from_json(p, f"{at}.parts[{i}]") for i, p in enumerate(_field(body, "parts", list, at, []))]
        if not all(isinstance(p, TextPart | Media) for p in inner):
            raise LineError(f"{at}.parts may hold only text and media")
        return ToolResult(
            tool_call_id=_field(body, "tool_call_id", str, at, ""),
            parts=tuple(cast("list[TextPart | Media]", inner)),
            is_error=_field(body, "is_error", bool, at, False),
        )
    if kind == "reasoning":
        return Reasoning(
            text=_field(body, "text", str, at, ""),
            signature=_unb64(body, "signature", at),
            redacted=_field(body, "redacted", bool, at, False),
        )
    if kind == "media":
        return Media(
            mime_type=_field(body, "mime_type", str, at, ""),
            uri=_field(body, "uri", str, at, ""),
            data=_unb64(body, "data", at),
            size_bytes=_field(body, "size_bytes", int, at, 0),
        )
    raise LineError(f"{where} has an unknown kind {kind!r}")


def input_from_json(obj: Mapping[str, Any], where: str) -> MessageInput:
    """Return the MessageInput that appends an exported message again, its parts, envelope and id unchanged.

    What the server assigns (``seq``, ``create_time``, ``thread_id``, ``workspace_id``) and what it
    derives (``compacted``, ``summarizes_through_seq``) are not part of the input and are ignored. Only
    ``role`` is required, so hand-written lines such as ``{"role": "user", "content": "hi"}`` work too.

    Args:
        obj: one parsed line.
        where: how errors name the line, for example ``line 7``.

    Raises:
        LineError: a missing or unknown role, or a field of the wrong type.
    """
    role = obj.get("role")
    if role not in ROLES:
        raise LineError(f"{where}: role must be one of {', '.join(ROLES)}, not {role!r}")
    metadata = _field(obj, "metadata", dict, where, {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise LineError(f"{where}: metadata must map strings to strings")
    parts = [part_from_json(p, f"{where}: parts[{i}]") for i, p in enumerate(_field(obj, "parts", list, where, []))]
    envelope = None
    if obj.get("envelope") is not None:
        body = _obj(obj["envelope"], f"{where}: envelope")
        envelope = Envelope(_field(body, "format", str, f"{where}: envelope", ""), _unb64(body, "raw", where))
    return MessageInput(
        role=cast("Role", role),
        content=_field(obj, "content", str, where, ""),
        name=_field(obj, "name", str, where, ""),
        metadata=metadata,
        parts=tuple(parts),
        envelope=envelope,
        message_id=_field(obj, "message_id", str, where, ""),
        token_count=_field(obj, "token_count", int, where, 0),
    )


def parse_line(line: str, number: int) -> dict[str, Any]:
    """Parse one JSON Lines line into an object; LineError naming the line number otherwise."""
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        raise LineError(f"line {number}: not JSON ({exc.msg})") from None
    if not isinstance(value, dict):
        raise LineError(f"line {number}: must be a JSON object")
    return value
