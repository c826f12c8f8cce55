"""Helpers the format converters share: compact JSON envelopes, text of parts, data URLs and media types."""

from __future__ import annotations

import base64
import binascii
import json
import mimetypes
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from chatmem.types import Envelope, Media, Message, Part, TextPart, ToolResult

DEFAULT_INLINE_LIMIT = 64 * 1024
"""The server's default LIMITS__MAX_INLINE_MEDIA_BYTES: larger inline media stays in the envelope only."""


class PydanticModel(Protocol):
    """An SDK object (a pydantic model) such as ``completion.choices[0].message``."""

    def model_dump(self, *, mode: str = ...) -> dict[str, Any]:
        """Return the model as a dict."""
        ...


def as_dict(message: Mapping[str, Any] | PydanticModel) -> Mapping[str, Any]:
    """Return a message dict as given, or an SDK model as its JSON-compatible dump."""
    return message if isinstance(message, Mapping) else message.model_dump(mode="json")


def signature_text(signature: bytes) -> str:
    """Return a reasoning signature as the text providers send (UTF-8); bytes that are not text as base64."""
    try:
        return signature.decode()
    except UnicodeDecodeError:
        return b64(signature)


def envelope(format_: str, original: Mapping[str, Any]) -> Envelope:
    """Return an envelope holding the compact JSON of ``original`` (UTF-8, key order as given)."""
    raw = json.dumps(original, separators=(",", ":"), ensure_ascii=False)
    return Envelope(format_, raw.encode())


def original(m: Message, format_: str) -> dict[str, Any] | None:
    """Return the envelope's JSON when ``m`` was stored in ``format_``, else None."""
    if m.envelope is None or m.envelope.format != format_:
        return None
    loaded: dict[str, Any] = json.loads(m.envelope.raw)
    return loaded


def text_of(parts: Iterable[Part]) -> str:
    """Return the concatenation of the top-level text parts (what the server puts in ``content``)."""
    return "".join(p.text for p in parts if isinstance(p, TextPart))


def readable(parts: Sequence[Part]) -> str:
    """Return the ``content`` a v1 reader sees: the text parts, or else the tool results' text."""
    return text_of(parts) or "\n".join(p.text for p in parts if isinstance(p, ToolResult))


def from_data_url(url: str) -> tuple[str, bytes] | None:
    """Split a ``data:<mime>;base64,<data>`` URL into its media type and bytes; None for any other URL."""
    if not url.startswith("data:"):
        return None
    header, sep, payload = url[5:].partition(",")
    mime, _, encoding = header.partition(";")
    if not sep or encoding != "base64":
        return None
    try:
        return mime, base64.b64decode(payload, validate=True)
    except binascii.Error:
        return None


def data_url(media: Media) -> str:
    """Return the ``data:`` URL of inline media."""
    return f"data:{media.mime_type};base64,{b64(media.data)}"


def b64(data: bytes) -> str:
    """Return standard base64 text."""
    return base64.b64encode(data).decode()


def guess_mime(uri: str, default: str) -> str:
    """Return the media type a URI's extension suggests, or ``default``."""
    guessed, _ = mimetypes.guess_type(uri.split("?", 1)[0])
    return guessed or default


def inline(mime: str, data: bytes, limit: int) -> Media | None:
    """Return inline media, or None when it exceeds the inline limit (the envelope still keeps it)."""
    return Media(mime_type=mime, data=data) if len(data) <= limit else None


def arguments_to_input(arguments: str) -> dict[str, Any]:
    """Parse a tool call's argument string into an object; text that is not one is kept under ``arguments``."""
    try:
        parsed = json.loads(arguments) if arguments else {}
    except ValueError:
        return {"arguments": arguments}
    return parsed if isinstance(parsed, dict) else {"arguments": arguments}


def compact(value: Any) -> str:
    """Return compact JSON, as the envelopes hold it."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
