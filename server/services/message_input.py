"""Validation of an appended message (v1 text or v2 parts) and its conversion to a NewMessage.

A v2 message's parts, envelope, id and token count are not unpacked into columns: they travel as the
request's own serialised fields 9-12 (which MessageInput and Message share), so that the stored and
cached Message carries them byte for byte.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from chatmem.v1 import resources_pb2
from server.storage.models import NewMessage, Role
from server.validation import Checker

_FORMAT = re.compile(r"[a-z][a-z0-9_-]*(\.[a-z][a-z0-9_-]*)*")
_MAX_FORMAT_LENGTH = 64
_MAX_TOOL_ID_LENGTH = 256
_NESTED_KINDS = frozenset({"text", "media"})


def text_of(parts: Iterable[resources_pb2.Part]) -> str:
    """Return the concatenation of the top-level text parts: what ``content`` holds for old readers."""
    return "".join(p.text for p in parts if p.WhichOneof("kind") == "text")


def _has_v2(m: resources_pb2.MessageInput) -> bool:
    return bool(m.parts) or m.HasField("envelope") or bool(m.message_id) or m.token_count != 0


def to_new_message(check: Checker, field: str, m: resources_pb2.MessageInput) -> NewMessage:
    """Check one appended message and return it as a NewMessage (violations go to ``check``).

    Args:
        check: collects violations with their field paths.
        field: the message's path, for example ``messages[2]``.
        m: the message as received.

    Returns:
        The message to store; meaningless when ``check`` recorded a violation.
    """
    limits = check.limits
    check.role(f"{field}.role", m.role)
    check.text(f"{field}.name", m.name, limits.max_name_length)
    check.metadata(f"{field}.metadata", m.metadata)
    if not _has_v2(m):
        check.text(f"{field}.content", m.content, limits.max_content_bytes)
        return NewMessage(_role(m.role), m.content, m.name, dict(m.metadata))
    content = m.content
    if len(m.parts) > limits.max_parts_per_message:
        check.fail(f"{field}.parts", f"holds more than {limits.max_parts_per_message} parts")
    else:
        for j, part in enumerate(m.parts):
            _check_part(check, f"{field}.parts[{j}]", part, nested=False)
        joined = text_of(m.parts)
        if joined:
            if content and content != joined:
                check.fail(f"{field}.content", "must be empty or equal the concatenation of the text parts")
            content = joined
    check.text(f"{field}.content", content, limits.max_content_bytes)
    if m.HasField("envelope"):
        env = m.envelope
        if len(env.format) > _MAX_FORMAT_LENGTH or not _FORMAT.fullmatch(env.format):
            check.fail(f"{field}.envelope.format", 'must be a lowercase dotted name such as "openai.chat"')
        if len(env.raw) > limits.max_envelope_bytes:
            check.fail(f"{field}.envelope.raw", f"is larger than {limits.max_envelope_bytes} bytes")
    if m.message_id:
        check.ident(f"{field}.message_id", m.message_id)
    if m.token_count < 0:
        check.fail(f"{field}.token_count", "must not be negative")
    extra = resources_pb2.MessageInput()
    extra.CopyFrom(m)
    extra.ClearField("role")
    extra.ClearField("content")
    extra.ClearField("name")
    extra.ClearField("metadata")
    return NewMessage(_role(m.role), content, m.name, dict(m.metadata), m.message_id, extra.SerializeToString())


def _role(value: int) -> Role:
    try:
        return Role(value)
    except ValueError:
        return Role.USER  # only with a violation recorded, so the message is never stored


def _check_part(check: Checker, field: str, part: resources_pb2.Part, *, nested: bool) -> None:
    limits = check.limits
    kind = part.WhichOneof("kind")
    if kind is None:
        check.fail(field, "must set one of text, tool_call, tool_result, reasoning, media")
    elif nested and kind not in _NESTED_KINDS:
        check.fail(f"{field}.{kind}", "a tool result holds only text and media parts")
    elif kind == "text":
        check.text(f"{field}.text", part.text, limits.max_content_bytes)
    elif kind == "tool_call":
        call = part.tool_call
        _tool_id(check, f"{field}.tool_call.id", call.id)
        if not call.name:
            check.fail(f"{field}.tool_call.name", "is required")
        check.text(f"{field}.tool_call.name", call.name, limits.max_name_length)
        check.text(f"{field}.tool_call.arguments", call.arguments, limits.max_content_bytes)
    elif kind == "tool_result":
        result = part.tool_result
        _tool_id(check, f"{field}.tool_result.tool_call_id", result.tool_call_id)
        if len(result.parts) > limits.max_parts_per_message:
            check.fail(f"{field}.tool_result.parts", f"holds more than {limits.max_parts_per_message} parts")
            return
        for k, inner in enumerate(result.parts):
            _check_part(check, f"{field}.tool_result.parts[{k}]", inner, nested=True)
    elif kind == "reasoning":
        check.text(f"{field}.reasoning.text", part.reasoning.text, limits.max_content_bytes)
        if len(part.reasoning.signature) > limits.max_envelope_bytes:
            check.fail(f"{field}.reasoning.signature", f"is larger than {limits.max_envelope_bytes} bytes")
    else:
        _check_media(check, f"{field}.media", part.media)


def _tool_id(check: Checker, field: str, value: str) -> None:
    if not value:
        check.fail(field, "is required")
    elif len(value) > _MAX_TOOL_ID_LENGTH:
        check.fail(field, f"is longer than {_MAX_TOOL_ID_LENGTH} characters")


def _check_media(check: Checker, field: str, media: resources_pb2.Media) -> None:
    limits = check.limits
    if not media.mime_type or "/" not in media.mime_type or len(media.mime_type) > 255:
        check.fail(f"{field}.mime_type", 'is required, as a media type such as "image/png"')
    if not media.uri and not media.data:
        check.fail(f"{field}.uri", "is required unless data is set")
    if len(media.uri) > 8192:
        check.fail(f"{field}.uri", "is longer than 8192 characters")
    if len(media.data) > limits.max_inline_media_bytes:
        check.fail(
            f"{field}.data", f"is larger than {limits.max_inline_media_bytes} bytes inline; store it and pass a uri"
        )
    if media.size_bytes < 0:
        check.fail(f"{field}.size_bytes", "must not be negative")
