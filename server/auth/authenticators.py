"""Authenticators: turn a call's metadata into a Principal (API key looked up in the KeyStore, or a JWT)."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Protocol

from server.auth import keys
from server.auth.roles import AccessRole
from server.auth.tokens import JwtVerifier, TokenError
from server.errors import StoreDownError, UnauthenticatedError
from server.interceptors import Principal
from server.storage.apikeys import ApiKeyRecord, KeyStore
from server.storage.protocols import StoreUnavailableError


class LookupRefusedError(UnauthenticatedError):
    """The credential could only be checked with a store lookup, which the caller did not allow."""


class Authenticator(Protocol):
    """Checks the credential a call carries."""

    async def authenticate(self, metadata: Mapping[str, str], *, lookups: bool = True) -> Principal:
        """Return who is calling.

        Args:
            metadata: the call's metadata.
            lookups: whether the store may be asked; without, only credentials that can be checked
                locally (a cached API key, a JWT) are accepted.

        Raises:
            LookupRefusedError: ``lookups`` is False and the credential needs one.
            UnauthenticatedError: no credential, or a bad one (the message holds no secret).
            UnavailableError: the credential could not be checked right now.
        """
        ...


def bearer(metadata: Mapping[str, str]) -> str | None:
    """Return the token of an ``authorization: Bearer <token>`` header, or None."""
    value = metadata.get("authorization")
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise UnauthenticatedError("the authorization header must be 'Bearer <credential>'")
    return token.strip()


class ApiKeyAuthenticator:
    """API keys from ``authorization: Bearer <key>`` or ``x-api-key: <key>``, checked against stored hashes.

    A key found in the store is trusted (or refused, if revoked) for ``cache_s`` seconds without another
    lookup, so a revocation takes effect on this replica within that time.

    Args:
        store: where the keys live.
        cache_s: how long a looked-up key is kept (0: look up on every call).
        cache_max: most keys kept.
        clock: monotonic seconds (tests pass a fake).
    """

    def __init__(
        self, store: KeyStore, cache_s: float, cache_max: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._store = store
        self._cache_s = cache_s
        self._cache_max = cache_max
        self._clock = clock
        self._cache: OrderedDict[str, tuple[float, ApiKeyRecord]] = OrderedDict()

    async def authenticate(self, metadata: Mapping[str, str], *, lookups: bool = True) -> Principal:
        """Return the key's principal, or raise UnauthenticatedError."""
        text = bearer(metadata) or metadata.get("x-api-key")
        if not text:
            raise UnauthenticatedError("missing credential: send 'authorization: Bearer <api key>' or 'x-api-key'")
        parsed = keys.parse(text)
        if parsed is None:
            raise UnauthenticatedError("malformed API key")
        record = await self._lookup(parsed.key_id) if lookups else self._cached(parsed.key_id)
        if record is None or not keys.matches(parsed.secret, record.secret_hash):
            raise UnauthenticatedError(f"unknown API key {parsed.key_id}")
        if record.revoked:
            raise UnauthenticatedError(f"API key {parsed.key_id} is revoked")
        role = AccessRole.parse(record.role)
        if role is None:  # the table's CHECK constraint makes this unreachable short of manual edits
            raise UnauthenticatedError(f"API key {parsed.key_id} has no valid role")
        return Principal(record.workspace_id, role.label, f"key:{record.key_id}")

    def _cached(self, key_id: str) -> ApiKeyRecord:
        hit = self._cache.get(key_id)
        if hit is None or hit[0] <= self._clock():
            raise LookupRefusedError(f"API key {key_id} would need a lookup")
        return hit[1]

    async def _lookup(self, key_id: str) -> ApiKeyRecord | None:
        now = self._clock()
        hit = self._cache.get(key_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        try:
            record = await self._store.get_api_key(key_id)
        except StoreUnavailableError as exc:
            raise StoreDownError("cannot check the API key: the store is unavailable") from exc
        if record is None:
            self._cache.pop(key_id, None)
            return None
        if self._cache_s > 0:
            self._cache.pop(key_id, None)
            self._cache[key_id] = (now + self._cache_s, record)
            while len(self._cache) > self._cache_max:
                self._cache.popitem(last=False)
        return record


class JwtAuthenticator:
    """Bearer JWTs verified by a JwtVerifier.

    Args:
        verifier: the configured verifier.
    """

    def __init__(self, verifier: JwtVerifier) -> None:
        self._verifier = verifier

    async def authenticate(self, metadata: Mapping[str, str], *, lookups: bool = True) -> Principal:
        """Return the token's principal, or raise UnauthenticatedError (a JWT needs no lookup)."""
        token = bearer(metadata)
        if not token:
            raise UnauthenticatedError("missing credential: send 'authorization: Bearer <JWT>'")
        try:
            claims = self._verifier.verify(token)
        except TokenError as exc:
            raise UnauthenticatedError(f"invalid token ({exc})") from exc
        return Principal(claims.workspace_id, claims.role.label, f"jwt:{claims.subject}")
