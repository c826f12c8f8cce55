"""Opaque page tokens: base64url JSON bound to the query they continue, validated on the way back in."""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from typing import Any

from server.errors import InvalidArgumentError
from server.validation import MAX_SEQ, is_valid_id

# Microseconds of 9999-12-31T23:59:59.999999Z: the largest create time a thread token may name.
MAX_TIME_US = 253_402_300_799_999_999


def _scope_hash(scope: str) -> int:
    return zlib.crc32(scope.encode())


def encode(kind: str, scope: str, position: dict[str, Any]) -> str:
    """Return a token for the next page of the query ``scope`` of type ``kind``."""
    body = json.dumps({"k": kind, "q": _scope_hash(scope), "p": position}, separators=(",", ":"))
    return base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")


def decode(token: str, kind: str, scope: str) -> dict[str, Any]:
    """Return the position in a token, or raise INVALID_ARGUMENT naming page_token.

    A token only continues the query it was issued for: another thread, user or direction is refused.
    """
    bad = InvalidArgumentError.single("page_token", "is not a page token this server issued for this request")
    if len(token) > 1024:
        raise bad
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        body = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise bad from exc
    if not isinstance(body, dict) or body.get("k") != kind or body.get("q") != _scope_hash(scope):
        raise bad
    position = body.get("p")
    if not isinstance(position, dict):
        raise bad
    return position


def require_int(position: dict[str, Any], name: str, *, low: int = 0, high: int = MAX_SEQ) -> int:
    """Read an integer field of a decoded position (low..high), or raise INVALID_ARGUMENT."""
    value = position.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < low or value > high:
        raise InvalidArgumentError.single("page_token", "is damaged")
    return value


def require_id(position: dict[str, Any], name: str) -> str:
    """Read an id field of a decoded position, or raise INVALID_ARGUMENT."""
    value = position.get(name)
    if not isinstance(value, str) or not is_valid_id(value, 1024):
        raise InvalidArgumentError.single("page_token", "is damaged")
    return value
