"""JWT verification (pyjwt): HS256 with a shared secret, or RS256/ES256 with a public key; algorithms pinned."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from server.auth.roles import AccessRole
from server.config import AuthSettings


class TokenError(Exception):
    """The token is malformed, badly signed, expired, for another audience, or lacks a claim we need."""


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """What a verified token grants."""

    workspace_id: str
    role: AccessRole
    subject: str


def _public_key(path: str) -> tuple[Any, str]:
    key = load_pem_public_key(pathlib.Path(path).read_bytes())
    if isinstance(key, rsa.RSAPublicKey):
        return key, "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise ValueError(f"{path}: ES256 needs a P-256 key, not {key.curve.name}")
        return key, "ES256"
    raise ValueError(f"{path}: not an RSA or EC public key")


class JwtVerifier:
    """Verify bearer JWTs against one key, accepting exactly one algorithm (never ``none``).

    Args:
        settings: AUTH__ settings with either ``jwt_secret`` or ``jwt_public_key_file``.

    Raises:
        ValueError: the key file cannot be used.
    """

    def __init__(self, settings: AuthSettings) -> None:
        if settings.jwt_secret is not None:
            self._key: Any = settings.jwt_secret.get_secret_value().encode()
            self.algorithm = "HS256"
        elif settings.jwt_public_key_file:
            self._key, self.algorithm = _public_key(settings.jwt_public_key_file)
        else:
            raise ValueError("JWT verification needs AUTH__JWT_SECRET or AUTH__JWT_PUBLIC_KEY_FILE")
        self._audience = settings.jwt_audience
        self._issuer = settings.jwt_issuer
        self._workspace_claim = settings.jwt_workspace_claim
        self._role_claim = settings.jwt_role_claim
        self._leeway = settings.jwt_leeway_s
        required = ["exp", self._workspace_claim, self._role_claim]
        if self._audience:
            required.append("aud")
        if self._issuer:
            required.append("iss")
        self._required = required

    def verify(self, token: str) -> TokenClaims:
        """Return the claims of a valid token.

        Raises:
            TokenError: the token is not acceptable; the message says why (it holds no secret).
        """
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[self.algorithm],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": self._required},
            )
        except jwt.PyJWTError as exc:
            raise TokenError(f"{type(exc).__name__}: {exc}") from exc
        workspace = claims.get(self._workspace_claim)
        if not isinstance(workspace, str) or not workspace:
            raise TokenError(f"claim {self._workspace_claim!r} is not a non-empty string")
        role = AccessRole.parse(claims.get(self._role_claim))
        if role is None:
            raise TokenError(f"claim {self._role_claim!r} is not one of read, write, admin")
        subject = claims.get("sub")
        return TokenClaims(workspace, role, subject if isinstance(subject, str) else "")
