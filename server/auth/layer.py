"""The authentication layer: credential -> principal, failed-attempt limit per address, role and workspace checks."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from server.auth.authenticators import ApiKeyAuthenticator, Authenticator, JwtAuthenticator
from server.auth.limiter import FailureLimiter, peer_host
from server.auth.roles import AccessRole, required_role
from server.auth.tokens import JwtVerifier
from server.config import AuthSettings
from server.errors import AuthThrottledError, PermissionDeniedError, UnauthenticatedError
from server.interceptors import Call
from server.storage.apikeys import KeyStore

log = logging.getLogger(__name__)


class AuthLayer:
    """Authenticate every chatmem RPC and bind it to the credential's workspace.

    A request whose ``workspace_id`` is empty is rewritten to the credential's workspace; one naming
    another workspace is PERMISSION_DENIED, as is a role below the one the method needs
    (``roles.METHOD_ROLES``). A peer address with too many failed attempts gets RESOURCE_EXHAUSTED
    unless its credential can be checked without the store (a cached API key, a valid JWT).

    Args:
        authenticator: checks the credential.
        limiter: counts failed attempts per peer address.
    """

    def __init__(self, authenticator: Authenticator, limiter: FailureLimiter) -> None:
        self._authenticator = authenticator
        self._limiter = limiter

    @contextlib.asynccontextmanager
    async def around(self, call: Call) -> AsyncIterator[None]:
        """Refuse the call (by raising) unless its credential allows it; then run it."""
        peer = peer_host(str(call.context.peer() or ""))
        wait_s = self._limiter.retry_after(peer)
        try:
            # A locked-out address still gets in with a credential checked locally (a cached key, a
            # JWT): clients sharing an address (NAT, a proxy) are not locked out by one bad client,
            # and the address can no longer make the store look anything up.
            principal = await self._authenticator.authenticate(call.metadata, lookups=wait_s <= 0)
        except UnauthenticatedError as exc:
            if wait_s > 0:
                raise AuthThrottledError("too many failed authentication attempts from this address", wait_s) from exc
            self._limiter.failed(peer)
            log.warning("authentication failed: peer=%s method=%s: %s", peer, call.method, exc.message)
            raise
        call.principal = principal
        needed = required_role(call.method)
        role = AccessRole.parse(principal.role)
        if role is None or role < needed:
            log.info("permission denied: %s (%s) called %s", principal.subject, principal.role, call.method)
            raise PermissionDeniedError(
                f"{call.name} needs the {needed.label} role; this credential has {principal.role}"
            )
        self._bind_workspace(call)
        yield

    @staticmethod
    def _bind_workspace(call: Call) -> None:
        assert call.principal is not None
        request = call.request
        descriptor = getattr(request, "DESCRIPTOR", None)  # None: bytes that did not parse (refused next)
        if descriptor is None or "workspace_id" not in descriptor.fields_by_name:
            return  # not a workspace-scoped request; the role table alone decides
        named = call.workspace_id
        if not named:
            request.workspace_id = call.principal.workspace_id
        elif named != call.principal.workspace_id:
            log.info("permission denied: %s named workspace %r in %s", call.principal.subject, named, call.method)
            raise PermissionDeniedError(f"this credential may not act in workspace {named!r}")


def build_auth_layer(settings: AuthSettings, store: object) -> AuthLayer | None:
    """Build the layer for AUTH__MODE (None when auth is off).

    Args:
        settings: the AUTH__ section.
        store: the durable store; it must implement KeyStore for ``api_key`` mode.

    Raises:
        ValueError: the settings cannot be used (e.g. an unreadable JWT key file).
    """
    if settings.mode == "none":
        return None
    authenticator: Authenticator
    if settings.mode == "api_key":
        if not isinstance(store, KeyStore):
            raise ValueError(f"AUTH__MODE=api_key needs a store with API keys; {type(store).__name__} has none")
        authenticator = ApiKeyAuthenticator(store, settings.key_cache_s, settings.key_cache_max)
    else:
        authenticator = JwtAuthenticator(JwtVerifier(settings))
    limiter = FailureLimiter(settings.max_failures, settings.failure_window_s, settings.max_tracked_peers)
    return AuthLayer(authenticator, limiter)
