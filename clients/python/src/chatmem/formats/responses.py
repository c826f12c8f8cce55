"""OpenAI Responses input items (what the Agents SDK keeps in a session) to and from chatmem messages."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from chatmem.formats._common import (
    DEFAULT_INLINE_LIMIT,
    PydanticModel,
    as_dict,
    data_url,
    envelope,
    from_data_url,
    guess_mime,
    inline,
    original,
    readable,
)
from chatmem.types import Media, Message, MessageInput, Part, Reasoning, Role, TextPart, ToolCall, ToolResult

FORMAT = "openai.responses"
"""The envelope format of an OpenAI Responses input item."""

_MESSAGE_ROLES: dict[str, Role] = {
    "user": "user",
    "assistant": "assistant",
    "system": "system",
    "developer": "developer",
}


def from_responses(
    item: Mapping[str, Any] | PydanticModel, *, token_count: int = 0, inline_limit: int = DEFAULT_INLINE_LIMIT
) -> MessageInput:
    """Convert an OpenAI Responses input item to a chatmem message, losslessly.

    The whole item is kept as the envelope, so ``to_responses`` gives it back exactly. The parts hold
    what maps: a message's text, images and files; a ``function_call`` or ``custom_tool_call`` as a
    ``ToolCall`` (its ``call_id``, name and argument string); their ``*_output`` as a ``ToolResult``;
    a ``reasoning`` item as ``Reasoning`` (its text, else its summary, and ``encrypted_content`` as the
    signature). Other items (computer, shell, MCP calls, item references ...) keep only the envelope.
    The item's ``id`` becomes the ``message_id``.

    Args:
        item: an input item dict, or an SDK output item (a pydantic model, kept as its JSON dump).
        token_count: the item's token count, when known.
        inline_limit: inline media larger than this many bytes is left out of the parts (the envelope keeps it).

    Returns:
        The message to append.
    """
    item = as_dict(item)
    kind = str(item.get("type") or ("message" if "role" in item else ""))
    role: Role
    parts: list[Part] = []
    if kind == "message":
        role = _MESSAGE_ROLES.get(str(item.get("role")), "user")
        parts = _content_parts(item.get("content"), inline_limit)
    elif kind in ("function_call", "custom_tool_call"):
        role = "assistant"
        arguments = item.get("arguments") if kind == "function_call" else item.get("input")
        parts = [ToolCall(str(item.get("call_id", "")), str(item.get("name", "")), str(arguments or ""))]
    elif kind in ("function_call_output", "custom_tool_call_output"):
        role = "tool"
        inner = tuple(p for p in _content_parts(item.get("output"), inline_limit) if isinstance(p, TextPart | Media))
        parts = [ToolResult(str(item.get("call_id", "")), inner)]
    elif kind == "reasoning":
        role = "assistant"
        parts = [_reasoning(item)]
    else:
        role = "tool" if kind.endswith("_output") else "assistant"
    return MessageInput(
        role=role,
        content=readable(parts),
        parts=tuple(parts),
        envelope=envelope(FORMAT, item),
        message_id=str(item.get("id") or ""),
        token_count=token_count,
    )


def to_responses(message: Message) -> list[dict[str, Any]]:
    """Return a stored message as Responses input items.

    A message appended with ``from_responses`` comes back as the one item it was, exactly. Any other is
    rebuilt from its parts: text and media as a message item, each tool call as a ``function_call``,
    each tool result as a ``function_call_output``; reasoning is left out (an input reasoning item
    needs the provider's id).

    Args:
        message: a stored message.

    Returns:
        The items, in order (one for a message stored in this format).
    """
    kept = original(message, FORMAT)
    if kept is not None:
        return [kept]
    parts: list[Part] = list(message.parts) if message.parts else [TextPart(message.content)] if message.content else []
    out: list[dict[str, Any]] = []
    shown = [p for p in parts if isinstance(p, TextPart | Media)]
    if shown:
        role = message.role if message.role in _MESSAGE_ROLES else "assistant"
        out.append({"type": "message", "role": role, "content": _content(shown, role)})
    for p in parts:
        if isinstance(p, ToolCall):
            out.append({"type": "function_call", "call_id": p.id, "name": p.name, "arguments": p.arguments})
        elif isinstance(p, ToolResult):
            out.append({"type": "function_call_output", "call_id": p.tool_call_id, "output": p.text})
    return out


def to_responses_items(messages: Iterable[Message]) -> list[dict[str, Any]]:
    """Return stored messages as a Responses ``input`` list, oldest first (``to_responses`` of each)."""
    return [item for m in messages for item in to_responses(m)]


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
    if kind in ("input_text", "output_text", "text"):
        return TextPart(str(block.get("text", "")))
    if kind in ("input_image", "input_file"):
        url = str(block.get("image_url") or block.get("file_url") or block.get("file_data") or "")
        decoded = from_data_url(url)
        if decoded is not None:
            return inline(decoded[0], decoded[1], inline_limit)
        default = "image/*" if kind == "input_image" else "application/octet-stream"
        uri = url or str(block.get("file_id") or "")
        return Media(mime_type=guess_mime(str(block.get("filename") or uri), default), uri=uri) if uri else None
    return None  # a refusal, audio or a part of a newer API: the envelope keeps it


def _reasoning(item: Mapping[str, Any]) -> Reasoning:
    def texts(key: str) -> str:
        return "\n".join(str(p.get("text", "")) for p in item.get(key) or () if isinstance(p, Mapping))

    text = texts("content") or texts("summary")
    encrypted = str(item.get("encrypted_content") or "")
    return Reasoning(text=text, signature=encrypted.encode(), redacted=bool(encrypted) and not text)


def _content(parts: Sequence[Part], role: str) -> str | list[dict[str, Any]]:
    if len(parts) == 1 and isinstance(parts[0], TextPart):
        return parts[0].text
    text_type = "output_text" if role == "assistant" else "input_text"
    out: list[dict[str, Any]] = []
    for p in parts:
        if isinstance(p, TextPart):
            out.append({"type": text_type, "text": p.text})
        elif isinstance(p, Media):
            out.append(_media_block(p))
    return out


def _media_block(media: Media) -> dict[str, Any]:
    url = media.uri or data_url(media)
    if media.mime_type.startswith("image/"):
        return {"type": "input_image", "image_url": url, "detail": "auto"}
    if media.data:
        return {"type": "input_file", "file_data": url}
    return {"type": "input_file", "file_url": url}
