"""Test helpers for authentication: settings with an AUTH__ section, keys written to a store, signed JWTs."""

from __future__ import annotations

import time
from typing import Any

import jwt

from server.auth import keys
from server.config import AuthSettings, Settings
from server.storage.apikeys import ApiKeyRecord, KeyStore

JWT_SECRET = "test-secret-that-is-at-least-32-bytes-long"


def with_auth(settings: Settings, **auth: Any) -> Settings:
    """Return the settings with an AUTH__ section (validated)."""
    return settings.model_copy(update={"auth": AuthSettings(**auth)})


def with_grpc(settings: Settings, **grpc: Any) -> Settings:
    """Return the settings with GRPC__ fields changed (validated)."""
    merged = settings.grpc.model_dump() | grpc
    return settings.model_copy(update={"grpc": type(settings.grpc)(**merged)})


async def create_key(store: Any, workspace_id: str, role: str, name: str = "") -> tuple[str, str]:
    """Create an API key in the store; return (full key text, key id)."""
    assert isinstance(store, KeyStore)
    text, parsed = keys.generate()
    await store.create_api_key(ApiKeyRecord(parsed.key_id, workspace_id, role, name, keys.hash_secret(parsed.secret)))
    return text, parsed.key_id


def make_jwt(
    workspace: str | None,
    role: str | None,
    *,
    key: Any = JWT_SECRET,
    algorithm: str = "HS256",
    exp_in_s: float | None = 86400,  # tokens made at collection must outlive a long run
    **claims: Any,
) -> str:
    """Sign a token with the workspace and role claims (None leaves a claim out)."""
    body: dict[str, Any] = {"sub": "tester", **claims}
    if workspace is not None:
        body["workspace"] = workspace
    if role is not None:
        body["role"] = role
    if exp_in_s is not None:
        body["exp"] = int(time.time() + exp_in_s)
    return jwt.encode(body, key, algorithm=algorithm)


def bearer(credential: str) -> tuple[tuple[str, str]]:
    """Call metadata carrying a bearer credential."""
    return (("authorization", f"Bearer {credential}"),)
