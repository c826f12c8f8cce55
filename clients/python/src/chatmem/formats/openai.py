"""OpenAI Chat Completions messages (the dicts the ``openai`` SDK sends and receives) to and from chatmem messages."""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from chatmem.formats._common import (
    DEFAULT_INLINE_LIMIT,
    PydanticModel,
    as_dict,
    b64,
    data_url,
    envelope,
    from_data_url,
    guess_mime,
    inline,
    original,
    readable,
)
from chatmem.types import Media, Message, MessageInput, Part, Reasoning, Role, TextPart, ToolCall, ToolResult

FORMAT = "openai.chat"
"""The envelope format of an OpenAI Chat Completions message."""

_ROLES: dict[str, Role] = {
    "system": "system",
    "developer": "developer",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
    "function": "tool",  # the deprecated predecessor of "tool": a result named by function, without a call id
}


def from_openai(
    message: Mapping[str, Any] | PydanticModel,
    *,
    usage: Mapping[str, Any] | None = None,
    token_count: int = 0,
    inline_limit: int = DEFAULT_INLINE_LIMIT,
) -> MessageInput:
    """Convert an OpenAI Chat Completions message to a chatmem message, losslessly.

    The parts are text, images (``image_url``, by URL or as inline ``data:`` URL), audio
    (``input_audio``), files, tool calls (arguments kept as the exact string) and, for a ``tool``
    message, one tool result. The whole dict is kept as the envelope, so ``to_openai`` gives it back
    exactly. OpenAI chat messages have no id, so ``message_id`` stays empty.

    Args:
        message: a message param (``{"role": ..., "content": ...}``), or a response's
            ``choices[i].message`` (the SDK object, kept as its ``model_dump(mode="json")``).
        usage: the completion's ``usage``; its ``completion_tokens`` becomes an assistant message's token count.
        token_count: the message's token count, when known (it wins over ``usage``).
        inline_limit: inline media larger than this many bytes is left out of the parts (the envelope keeps
            it); the server's default limit is 64 KiB.

    Returns:
        The message to append.

    Raises:
        ValueError: a role chatmem does not have.
    """
    message = as_dict(message)
    role_name = str(message.get("role", ""))
    role = _ROLES.get(role_name)
    if role is None:
        raise ValueError(f"chatmem cannot store an OpenAI message of role {role_name!r}")
    content = _content_parts(message.get("content"), inline_limit)
    parts: list[Part]
    if role == "tool":
        inner = tuple(p for p in content if isinstance(p, TextPart | Media))
        parts = [ToolResult(str(message["tool_call_id"]), inner)] if "tool_call_id" in message else content
    else:
        parts = [*content, *_tool_calls(message.get("tool_calls") or ())]
    if not token_count and usage is not None and role == "assistant":
        token_count = int(usage.get("completion_tokens") or 0)
    return MessageInput(
        role=role,
        content=readable(parts),
        name=str(message.get("name") or ""),
        parts=tuple(parts),
        envelope=envelope(FORMAT, message),
        token_count=token_count,
    )


def to_openai(message: Message) -> dict[str, Any]:
    """Return a stored message as an OpenAI Chat Completions message param.

    A message appended with ``from_openai`` comes back exactly as it was given. Any other is rebuilt from
    its parts: text and media become ``content`` (a string when it is a single text), tool calls
    ``tool_calls``, a tool result a ``tool`` message; reasoning has no place in the format and is left out.

    Args:
        message: a stored message (``get_history(..., typed=True)``).

    Returns:
        The message dict.

    Raises:
        ValueError: the message holds several tool results (``to_openai_messages`` splits them).
    """
    converted = to_openai_messages([message])
    if len(converted) != 1:
        raise ValueError("the message holds several tool results; use to_openai_messages, which splits them")
    return converted[0]


def to_openai_messages(messages: Iterable[Message]) -> list[dict[str, Any]]:
    """Return stored messages as the ``messages`` list of a Chat Completions request.

    As ``to_openai``, but a message holding several tool results (an Anthropic user turn answering
    parallel calls) becomes one ``tool`` message per result, followed by what else it holds.

    Args:
        messages: stored messages, oldest first.

    Returns:
        The message dicts, in order.
    """
    out: list[dict[str, Any]] = []
    for m in messages:
        kept = original(m, FORMAT)
        if kept is not None:
            out.append(kept)
            continue
        parts: list[Part] = list(m.parts) if m.parts else [TextPart(m.content)] if m.content else []
        results = [p for p in parts if isinstance(p, ToolResult)]
        out.extend(_tool_message(r) for r in results)
        rest = [p for p in parts if not isinstance(p, ToolResult | Reasoning)]
        if rest or not results:
            out.append(_rebuild(m, rest))
    return out


def _content_parts(content: Any, inline_limit: int) -> list[Part]:
    if content is None:
        return []
    if isinstance(content, str):
        return [TextPart(content)] if content else []
    parts: list[Part] = []
    for block in content:
        part = _content_part(block, inline_limit)
        if part is not None:
            parts.append(part)
    return parts


def _content_part(block: Mapping[str, Any], inline_limit: int) -> Part | None:
    kind = block.get("type")
    if kind == "text":
        return TextPart(str(block["text"]))
    if kind == "image_url":
        url = str(block["image_url"]["url"])
        decoded = from_data_url(url)
        if decoded is None:
            return Media(mime_type=guess_mime(url, "image/*"), uri=url)
        return inline(decoded[0], decoded[1], inline_limit)
    if kind == "input_audio":
        audio = block["input_audio"]
        return inline(f"audio/{audio['format']}", base64.b64decode(audio["data"]), inline_limit)
    if kind == "file":
        file = block["file"]
        if file.get("file_id"):
            return Media(
                mime_type=guess_mime(str(file.get("filename", "")), "application/octet-stream"), uri=file["file_id"]
            )
        decoded = from_data_url(str(file.get("file_data", "")))
        return None if decoded is None else inline(decoded[0], decoded[1], inline_limit)
    return None  # a refusal or a part of a newer API: the envelope keeps it


def _tool_calls(calls: Iterable[Mapping[str, Any]]) -> list[Part]:
    parts: list[Part] = []
    for call in calls:
        if call.get("type", "function") == "function":
            fn = call["function"]
            parts.append(ToolCall(id=str(call["id"]), name=str(fn["name"]), arguments=str(fn["arguments"])))
        elif call.get("type") == "custom":
            custom = call["custom"]
            parts.append(ToolCall(id=str(call["id"]), name=str(custom["name"]), arguments=str(custom["input"])))
    return parts


def _media_block(media: Media) -> dict[str, Any]:
    if media.mime_type.startswith("audio/") and media.data:
        return {"type": "input_audio", "input_audio": {"data": b64(media.data), "format": media.mime_type[6:]}}
    if media.mime_type.startswith("image/"):
        return {"type": "image_url", "image_url": {"url": media.uri or data_url(media)}}
    if media.data:
        return {"type": "file", "file": {"file_data": data_url(media)}}
    return {"type": "file", "file": {"file_id": media.uri}}


def _content(parts: Sequence[Part]) -> str | list[dict[str, Any]]:
    shown = [p for p in parts if isinstance(p, TextPart | Media)]
    if not shown:
        return ""
    if len(shown) == 1 and isinstance(shown[0], TextPart):
        return shown[0].text
    return [{"type": "text", "text": p.text} if isinstance(p, TextPart) else _media_block(p) for p in shown]


def _tool_message(result: ToolResult) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": result.tool_call_id, "content": _content(result.parts)}


def _rebuild(m: Message, parts: Sequence[Part]) -> dict[str, Any]:
    role = m.role if m.role in _ROLES else "user"
    if role == "tool":
        # No result part: a v1 tool message or a legacy function result, which names its function instead.
        if m.name:
            return {"role": "function", "name": m.name, "content": m.content}
        return {"role": "tool", "tool_call_id": "", "content": _content(parts)}
    out: dict[str, Any] = {"role": role, "content": _content(parts)}
    calls = [p for p in parts if isinstance(p, ToolCall)]
    if calls:
        out["content"] = out["content"] or None  # what the API returns for a turn that only calls tools
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in calls
        ]
    if m.name:
        out["name"] = m.name
    return out
