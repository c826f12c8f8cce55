"""The API-key records and the KeyStore Protocol that both durable stores implement (hashes only, no secrets)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    """One stored API key.

    Attributes:
        key_id: the public id (the part of the key between ``cmk_`` and the secret).
        workspace_id: the only workspace the key may act in.
        role: ``read``, ``write`` or ``admin``.
        name: a label for operators.
        secret_hash: SHA-256 of the secret; the secret itself is never stored.
        create_time_us: microseconds since the Unix epoch.
        revoke_time_us: when it was revoked, or None while it is live.
    """

    key_id: str
    workspace_id: str
    role: str
    name: str
    secret_hash: bytes
    create_time_us: int = 0
    revoke_time_us: int | None = None

    @property
    def revoked(self) -> bool:
        """True once the key has been revoked."""
        return self.revoke_time_us is not None


@runtime_checkable
class KeyStore(Protocol):
    """Where API keys live: the durable store (PostgreSQL or SQLite)."""

    async def create_api_key(self, record: ApiKeyRecord) -> ApiKeyRecord:
        """Insert a new key; return it with its create time."""
        ...

    async def get_api_key(self, key_id: str) -> ApiKeyRecord | None:
        """Return the key with this id (revoked or not), or None."""
        ...

    async def list_api_keys(self, workspace_id: str | None) -> Sequence[ApiKeyRecord]:
        """Return the keys of one workspace (None: all), oldest first."""
        ...

    async def revoke_api_key(self, key_id: str) -> bool:
        """Revoke a live key; return False when there is no live key with this id."""
        ...
