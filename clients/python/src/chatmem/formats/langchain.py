"""LangChain messages (every BaseMessage subclass, chunks included) to and from chatmem messages (extra langchain)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

try:
    from langchain_core.messages import (
        AIMessage,
        BaseMessage,
        ChatMessage,
        FunctionMessage,
        HumanMessage,
        SystemMessage,
        ToolMessage,
        message_to_dict,
        messages_from_dict,
    )
    from langchain_core.messages.utils import message_chunk_to_message
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("chatmem.formats.langchain needs langchain-core: pip install 'chatmem[langchain]'") from exc

from chatmem.formats._common import (
    DEFAULT_INLINE_LIMIT,
    b64,
    compact,
    from_data_url,
    guess_mime,
    inline,
    readable,
    signature_text,
)
from chatmem.types import Envelope, Media, Message, MessageInput, Part, Reasoning, Role, TextPart, ToolCall, ToolResult

FORMAT = "langchain"
"""The envelope format of a LangChain message: ``langchain_core.messages.message_to_dict`` as JSON."""

TOOL_CALL_ID_KEY = "lc_tool_call_id"
"""The message metadata key that keeps a ToolMessage's ``tool_call_id`` (``to_chatmem``'s v1 form)."""

TOOL_CALLS_KEY = "lc_tool_calls"
"""The message metadata key that keeps an AIMessage's ``tool_calls``, as JSON (``to_chatmem``'s v1 form)."""

_OPENAI_ROLE = "__openai_role__"  # where langchain-openai marks a SystemMessage as a developer message
_ROLE_OF_CHAT_ROLE: dict[str, Role] = {
    "human": "user",
    "user": "user",
    "ai": "assistant",
    "assistant": "assistant",
    "system": "system",
    "developer": "developer",
    "tool": "tool",
    "function": "tool",
}


def role_of(message: BaseMessage) -> Role:
    """Return the chatmem role of a LangChain message, by its class (chunk classes included).

    Args:
        message: the message.

    Returns:
        The role.

    Raises:
        ValueError: a ChatMessage with a role chatmem does not have, or a class it cannot store.
    """
    # By class, not message.type: a chunk's type is its class name ("AIMessageChunk"), not "ai".
    if isinstance(message, HumanMessage):
        return "user"
    if isinstance(message, AIMessage):
        return "assistant"
    if isinstance(message, SystemMessage):
        return "developer" if message.additional_kwargs.get(_OPENAI_ROLE) == "developer" else "system"
    if isinstance(message, ToolMessage | FunctionMessage):
        return "tool"
    if isinstance(message, ChatMessage) and message.role.lower() in _ROLE_OF_CHAT_ROLE:
        return _ROLE_OF_CHAT_ROLE[message.role.lower()]
    raise ValueError(f"chatmem cannot store a {message.type!r} message (role {getattr(message, 'role', '')!r})")


def to_chatmem(message: BaseMessage) -> dict[str, Any]:
    """Convert a LangChain message to the client's v1 message dict (role, content, name, metadata).

    Content given as a list of blocks is stored as its text. A ToolMessage's ``tool_call_id`` and an
    AIMessage's ``tool_calls`` are kept in the metadata, so that they come back. ``from_langchain`` keeps
    everything; the chat history uses it.

    Args:
        message: the message.

    Returns:
        The dict ``MemoryClient.append_messages`` takes.

    Raises:
        ValueError: a ChatMessage with a role chatmem does not have.
    """
    role = role_of(message)
    content = message.content if isinstance(message.content, str) else str(message.text)
    metadata: dict[str, str] = {}
    if isinstance(message, ToolMessage):
        metadata[TOOL_CALL_ID_KEY] = message.tool_call_id
    if isinstance(message, AIMessage) and message.tool_calls:
        metadata[TOOL_CALLS_KEY] = json.dumps(message.tool_calls)
    return {"role": role, "content": content, "name": message.name or "", "metadata": metadata}


def from_langchain(message: BaseMessage, *, inline_limit: int = DEFAULT_INLINE_LIMIT) -> MessageInput:
    """Convert a LangChain message to a chatmem message, losslessly.

    A chunk (``AIMessageChunk`` and the other ``*MessageChunk`` classes) is stored as the message it
    adds up to (``AIMessage`` ...). The parts are the content's text, images and reasoning blocks, an
    AIMessage's ``tool_calls`` and ``invalid_tool_calls`` (arguments as compact JSON, or the raw string),
    and a ToolMessage's result (``status="error"`` is ``is_error``). The envelope is
    ``message_to_dict`` as JSON, so ``to_langchain`` gives back an equal message, with ``id``,
    ``usage_metadata``, ``response_metadata`` and ``additional_kwargs``. The ``id`` becomes the
    ``message_id`` (unique in a thread), and ``usage_metadata["output_tokens"]`` the token count.

    Args:
        message: the message.
        inline_limit: inline media larger than this many bytes is left out of the parts (the envelope keeps it).

    Returns:
        The message to append.

    Raises:
        ValueError: a message chatmem cannot store (a ChatMessage with an unknown role, a RemoveMessage).
    """
    message = message_chunk_to_message(message)
    role = role_of(message)
    content = _content_parts(message.content, inline_limit)
    parts: list[Part]
    if isinstance(message, ToolMessage):
        inner = tuple(p for p in content if isinstance(p, TextPart | Media))
        parts = [ToolResult(message.tool_call_id, inner, message.status == "error")]
    else:
        parts = content
    token_count = 0
    if isinstance(message, AIMessage):
        parts.extend(_tool_calls(message))
        if message.usage_metadata:
            token_count = message.usage_metadata.get("output_tokens", 0)
    # default=str: an exotic value in response_metadata comes back as its text instead of failing the append.
    raw = json.dumps(message_to_dict(message), separators=(",", ":"), ensure_ascii=False, default=str)
    return MessageInput(
        role=role,
        content=readable(parts) if parts else "",
        name=message.name or "",
        parts=tuple(parts),
        envelope=Envelope(FORMAT, raw.encode()),
        message_id=message.id or "",
        token_count=token_count,
    )


def to_langchain(message: Message) -> BaseMessage:
    """Convert a stored message to the LangChain message of its role.

    A message appended with ``from_langchain`` comes back equal to what was given (a chunk as its
    message). Any other is rebuilt from its parts (a message of another format) or, for a plain v1
    message, from its content and ``to_chatmem``'s metadata keys.

    Args:
        message: the stored message.

    Returns:
        A HumanMessage, AIMessage, SystemMessage, ToolMessage, FunctionMessage or ChatMessage.

    Raises:
        ValueError: the message holds several tool results (``to_langchain_messages`` splits them).
    """
    converted = to_langchain_messages([message])
    if len(converted) != 1:
        raise ValueError("the message holds several tool results; use to_langchain_messages, which splits them")
    return converted[0]


def to_langchain_messages(messages: Iterable[Message]) -> list[BaseMessage]:
    """Convert stored messages to LangChain messages; a message with several tool results gives one ToolMessage each.

    Args:
        messages: stored messages, oldest first.

    Returns:
        The LangChain messages, in order.
    """
    out: list[BaseMessage] = []
    for m in messages:
        if m.envelope is not None and m.envelope.format == FORMAT:
            out.extend(messages_from_dict([json.loads(m.envelope.raw)]))
        elif m.parts:
            out.extend(_rebuild(m))
        else:
            out.append(_from_v1(m))
    return out


def _from_v1(message: Message) -> BaseMessage:
    name = message.name or None
    if message.role == "user":
        return HumanMessage(content=message.content, name=name)
    if message.role == "assistant":
        tool_calls = json.loads(message.metadata.get(TOOL_CALLS_KEY, "[]"))
        return AIMessage(content=message.content, name=name, tool_calls=tool_calls)
    if message.role == "system":
        return SystemMessage(content=message.content, name=name)
    if message.role == "developer":
        return SystemMessage(content=message.content, name=name, additional_kwargs={_OPENAI_ROLE: "developer"})
    if message.role == "tool":
        return ToolMessage(content=message.content, name=name, tool_call_id=message.metadata.get(TOOL_CALL_ID_KEY, ""))
    return ChatMessage(content=message.content, role=message.role, name=name)


def _rebuild(m: Message) -> list[BaseMessage]:
    kw: dict[str, Any] = {"name": m.name or None, "id": m.message_id or None}
    results = [p for p in m.parts if isinstance(p, ToolResult)]
    out: list[BaseMessage] = [
        ToolMessage(
            content=_content(r.parts), tool_call_id=r.tool_call_id, status="error" if r.is_error else "success", **kw
        )
        for r in results
    ]
    rest = [p for p in m.parts if not isinstance(p, ToolResult | ToolCall)]
    calls = [p for p in m.parts if isinstance(p, ToolCall)]
    if results and not rest and not calls:
        return out
    content = _content(rest)
    if m.role == "assistant":
        valid, invalid = _split_calls(calls)
        out.append(AIMessage(content=content, tool_calls=valid, invalid_tool_calls=invalid, **kw))
    elif m.role in ("system", "developer"):
        extra = {_OPENAI_ROLE: "developer"} if m.role == "developer" else {}
        out.append(SystemMessage(content=content, additional_kwargs=extra, **kw))
    else:
        out.append(HumanMessage(content=content, **kw))
    return out


def _split_calls(calls: Sequence[ToolCall]) -> tuple[list[Any], list[Any]]:
    valid: list[Any] = []
    invalid: list[Any] = []
    for c in calls:
        try:
            args = json.loads(c.arguments) if c.arguments else {}
        except ValueError:
            args = None
        if isinstance(args, dict):
            valid.append({"name": c.name, "args": args, "id": c.id, "type": "tool_call"})
        else:
            invalid.append(
                {"name": c.name, "args": c.arguments, "id": c.id, "error": None, "type": "invalid_tool_call"}
            )
    return valid, invalid


def _content(parts: Sequence[Part]) -> str | list[str | dict[str, Any]]:
    if all(isinstance(p, TextPart) for p in parts):
        return "".join(p.text for p in parts if isinstance(p, TextPart))
    return [_block(p) for p in parts]


def _block(part: Part) -> dict[str, Any]:
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    if isinstance(part, Media):
        kind = part.mime_type.split("/", 1)[0] if part.mime_type.split("/", 1)[0] in ("image", "audio") else "file"
        if part.data:
            return {"type": kind, "base64": b64(part.data), "mime_type": part.mime_type}
        return {"type": kind, "url": part.uri, "mime_type": part.mime_type}
    if isinstance(part, Reasoning):
        if part.redacted:
            return {"type": "redacted_thinking", "data": signature_text(part.signature)}
        if part.signature:
            return {"type": "thinking", "thinking": part.text, "signature": signature_text(part.signature)}
        return {"type": "reasoning", "reasoning": part.text}
    raise TypeError(f"no content block for {type(part).__name__}")  # tool calls and results are not content


def _content_parts(content: str | list[str | dict[str, Any]], inline_limit: int) -> list[Part]:
    if isinstance(content, str):
        return [TextPart(content)] if content else []
    parts: list[Part] = []
    for block in content:
        part = TextPart(block) if isinstance(block, str) else _block_part(block, inline_limit)
        if part is not None:
            parts.append(part)
    return parts


def _block_part(block: Mapping[str, Any], inline_limit: int) -> Part | None:
    kind = block.get("type")
    if kind == "text":
        return TextPart(str(block["text"]))
    if kind == "image_url":  # the OpenAI form
        url = block["image_url"]["url"] if isinstance(block["image_url"], Mapping) else block["image_url"]
        decoded = from_data_url(str(url))
        if decoded is None:
            return Media(mime_type=guess_mime(str(url), "image/*"), uri=str(url))
        return inline(decoded[0], decoded[1], inline_limit)
    if kind in ("image", "audio", "file"):  # LangChain's standard blocks
        mime = str(block.get("mime_type") or f"{'application' if kind == 'file' else kind}/*")
        data = block.get("base64") or (block.get("data") if block.get("source_type") == "base64" else None)
        if data:
            return inline(mime, base64.b64decode(data), inline_limit)
        if block.get("url"):
            return Media(mime_type=block.get("mime_type") or guess_mime(str(block["url"]), mime), uri=str(block["url"]))
        return None
    if kind == "thinking":
        return Reasoning(text=str(block["thinking"]), signature=str(block.get("signature", "")).encode())
    if kind == "redacted_thinking":
        return Reasoning(signature=str(block["data"]).encode(), redacted=True)
    if kind == "reasoning":
        return Reasoning(text=str(block.get("reasoning", "")))
    return None  # tool_use blocks repeat tool_calls; others of newer APIs stay in the envelope


def _tool_calls(message: AIMessage) -> list[Part]:
    # A call without an id or a name cannot be a part (the server requires both); the envelope keeps it.
    parts: list[Part] = [
        ToolCall(id=c["id"] or "", name=c["name"], arguments=compact(c["args"]))
        for c in message.tool_calls
        if c.get("id")
    ]
    parts.extend(
        ToolCall(id=c["id"] or "", name=c["name"] or "", arguments=c["args"] or "")
        for c in message.invalid_tool_calls
        if c.get("id") and c.get("name")
    )
    return parts
