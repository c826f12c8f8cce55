"""Anthropic Messages (the ``anthropic`` SDK's message params and responses, as dicts) to and from chatmem messages."""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from chatmem.formats._common import (
    DEFAULT_INLINE_LIMIT,
    PydanticModel,
    arguments_to_input,
    as_dict,
    b64,
    compact,
    envelope,
    guess_mime,
    inline,
    original,
    readable,
    signature_text,
)
from chatmem.types import Media, Message, MessageInput, Part, Reasoning, Role, TextPart, ToolCall, ToolResult

FORMAT = "anthropic"
"""The envelope format of an Anthropic message."""


def from_anthropic(
    message: Mapping[str, Any] | PydanticModel, *, token_count: int = 0, inline_limit: int = DEFAULT_INLINE_LIMIT
) -> MessageInput:
    """Convert an Anthropic message to a chatmem message, losslessly.

    Content blocks become parts: ``text``; ``image`` and ``document`` (by URL, or base64 under the inline
    limit); ``tool_use`` (a tool call whose arguments are the compact JSON of its ``input``);
    ``tool_result`` (with its text and images, and ``is_error``); ``thinking`` (reasoning whose signature
    is kept byte for byte) and ``redacted_thinking`` (redacted reasoning holding the blob). A user turn
    that only answers tool calls is stored with role ``tool``. The whole dict is the envelope, so
    ``to_anthropic`` gives it back exactly. A response (``client.messages.create(...).model_dump()``) also
    gives the message id (``msg_...``) and the token count (``usage.output_tokens``).

    Args:
        message: a message param (``{"role": ..., "content": ...}``), or a response (the SDK's ``Message``,
            kept as its ``model_dump(mode="json")``, or that dict).
        token_count: the message's token count, when known (it wins over the response's usage).
        inline_limit: inline media larger than this many bytes is left out of the parts (the envelope keeps it).

    Returns:
        The message to append.

    Raises:
        ValueError: a role other than ``user`` or ``assistant``.
    """
    message = as_dict(message)
    role_name = message.get("role")
    if role_name not in ("user", "assistant"):
        raise ValueError(f"chatmem cannot store an Anthropic message of role {role_name!r}")
    parts = _blocks_to_parts(message.get("content", ""), inline_limit)
    role: Role = role_name
    if role == "user" and parts and all(isinstance(p, ToolResult) for p in parts):
        role = "tool"
    is_response = message.get("type") == "message"
    usage = message.get("usage") or {}
    if not token_count and is_response:
        token_count = int(usage.get("output_tokens") or 0)
    return MessageInput(
        role=role,
        content=readable(parts),
        parts=tuple(parts),
        envelope=envelope(FORMAT, message),
        message_id=str(message.get("id") or "") if is_response else "",
        token_count=token_count,
    )


def to_anthropic(message: Message) -> dict[str, Any]:
    """Return a stored message as an Anthropic message param.

    A message appended with ``from_anthropic`` comes back exactly as it was given (a response dict as
    the response). Any other is rebuilt from its parts: the content is a string when it is a single text,
    else a list of blocks; a ``tool`` message becomes a user turn of ``tool_result`` blocks.

    Args:
        message: a stored message (``get_history(..., typed=True)``).

    Returns:
        The message dict.

    Raises:
        ValueError: a system or developer message (Anthropic takes those as the request's ``system``).
    """
    kept = original(message, FORMAT)
    if kept is not None:
        return kept
    if message.role not in ("user", "assistant", "tool"):
        raise ValueError(f"Anthropic has no {message.role!r} messages; pass them as the request's system")
    parts: list[Part] = list(message.parts) if message.parts else [TextPart(message.content)] if message.content else []
    role = "assistant" if message.role == "assistant" else "user"
    return {"role": role, "content": _content(parts)}


def to_anthropic_messages(messages: Iterable[Message]) -> tuple[str, list[dict[str, Any]]]:
    """Return stored messages as the ``system`` and ``messages`` of a Messages request.

    System and developer messages join into ``system`` (separated by a blank line). Consecutive tool
    messages (OpenAI stores one per parallel call) merge into the one user turn Anthropic expects.

    Args:
        messages: stored messages, oldest first.

    Returns:
        ``(system, messages)``.
    """
    system: list[str] = []
    out: list[dict[str, Any]] = []
    merging = False
    for m in messages:
        if m.role in ("system", "developer"):
            system.append(m.content)
            continue
        converted = to_anthropic(m)
        mergeable = m.role == "tool" and original(m, FORMAT) is None
        if mergeable and merging:
            out[-1]["content"] = _as_blocks(out[-1]["content"]) + _as_blocks(converted["content"])
        else:
            out.append(converted)
        merging = mergeable
    return "\n\n".join(system), out


def _blocks_to_parts(content: Any, inline_limit: int) -> list[Part]:
    if isinstance(content, str):
        return [TextPart(content)] if content else []
    parts: list[Part] = []
    for block in content:
        part = _block_to_part(block, inline_limit)
        if part is not None:
            parts.append(part)
    return parts


def _block_to_part(block: Mapping[str, Any], inline_limit: int) -> Part | None:
    kind = block.get("type")
    if kind == "text":
        return TextPart(str(block["text"]))
    if kind in ("image", "document"):
        return _source_to_media(block["source"], inline_limit)
    if kind == "tool_use":
        return ToolCall(id=str(block["id"]), name=str(block["name"]), arguments=compact(block.get("input", {})))
    if kind == "tool_result":
        inner = [p for p in _blocks_to_parts(block.get("content", ""), inline_limit) if isinstance(p, TextPart | Media)]
        return ToolResult(str(block["tool_use_id"]), tuple(inner), bool(block.get("is_error", False)))
    if kind == "thinking":
        return Reasoning(text=str(block["thinking"]), signature=str(block.get("signature", "")).encode())
    if kind == "redacted_thinking":
        return Reasoning(signature=str(block["data"]).encode(), redacted=True)
    return None  # a server tool block or one of a newer API: the envelope keeps it


def _source_to_media(source: Mapping[str, Any], inline_limit: int) -> Media | None:
    kind = source.get("type")
    if kind == "base64":
        return inline(str(source["media_type"]), base64.b64decode(source["data"]), inline_limit)
    if kind == "url":
        url = str(source["url"])
        return Media(mime_type=guess_mime(url, "image/*"), uri=url)
    if kind == "text":  # a plain-text document
        return inline(str(source.get("media_type", "text/plain")), str(source["data"]).encode(), inline_limit)
    return None


def _media_block(media: Media) -> dict[str, Any]:
    kind = "image" if media.mime_type.startswith("image/") else "document"
    if media.data:
        return {"type": kind, "source": {"type": "base64", "media_type": media.mime_type, "data": b64(media.data)}}
    return {"type": kind, "source": {"type": "url", "url": media.uri}}


def _block(part: Part) -> dict[str, Any]:
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    if isinstance(part, Media):
        return _media_block(part)
    if isinstance(part, ToolCall):
        return {"type": "tool_use", "id": part.id, "name": part.name, "input": arguments_to_input(part.arguments)}
    if isinstance(part, ToolResult):
        out: dict[str, Any] = {"type": "tool_result", "tool_use_id": part.tool_call_id}
        out["content"] = _content(part.parts)
        if part.is_error:
            out["is_error"] = True
        return out
    if part.redacted:
        return {"type": "redacted_thinking", "data": signature_text(part.signature)}
    return {"type": "thinking", "thinking": part.text, "signature": signature_text(part.signature)}


def _content(parts: Sequence[Part]) -> str | list[dict[str, Any]]:
    if len(parts) == 1 and isinstance(parts[0], TextPart):
        return parts[0].text
    if not parts:
        return ""
    return [_block(p) for p in parts]


def _as_blocks(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content
