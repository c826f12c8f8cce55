"""API key format ``cmk_<id>_<secret>``: generation, parsing and hashing (SHA-256 of a 256-bit secret).

The public id makes a lookup one primary-key read; only the secret's hash is stored, and it is
compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

PREFIX = "cmk"
_ID_BYTES = 8  # 16 hex characters: ids are public, they only need to be unique
_SECRET_BYTES = 32  # 256 bits of entropy: the hash need not be slow, guessing is hopeless
_KEY = re.compile(r"^cmk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True, slots=True)
class ParsedKey:
    """A presented key split into its public id and its secret."""

    key_id: str
    secret: str


def generate() -> tuple[str, ParsedKey]:
    """Return a new key's full text and its parts."""
    key_id = secrets.token_hex(_ID_BYTES)
    secret = secrets.token_urlsafe(_SECRET_BYTES)
    return f"{PREFIX}_{key_id}_{secret}", ParsedKey(key_id, secret)


def parse(text: str) -> ParsedKey | None:
    """Split a presented key into id and secret; None if it is not in the key format."""
    match = _KEY.match(text.strip())
    if match is None:
        return None
    return ParsedKey(match.group(1), match.group(2))


def hash_secret(secret: str) -> bytes:
    """Return the SHA-256 digest stored for a secret."""
    return hashlib.sha256(secret.encode()).digest()


def matches(secret: str, stored_hash: bytes) -> bool:
    """Compare a presented secret with a stored hash in constant time."""
    return hmac.compare_digest(hash_secret(secret), stored_hash)
