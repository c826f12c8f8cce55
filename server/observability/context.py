"""The request context layer: each RPC's request id, in a context variable for its logs and echoed to the client."""

from __future__ import annotations

import logging
import os
import re
import time
from contextvars import ContextVar, Token
from types import TracebackType

from server.interceptors import Call, code_of

REQUEST_ID_HEADER = "x-request-id"
MAX_REQUEST_ID_LENGTH = 128
# A client's id is echoed in headers and written to logs, so only a bounded, printable, header-safe
# set of characters is accepted; anything else is replaced by a generated id.
_SAFE_ID = re.compile(rf"[A-Za-z0-9._:@/+=-]{{1,{MAX_REQUEST_ID_LENGTH}}}")

request_id_var: ContextVar[str] = ContextVar("chatmem_request_id", default="")

access_log = logging.getLogger("chatmem.access")


def current_request_id() -> str:
    """Return the request id of the RPC being served, or "" outside one."""
    return request_id_var.get()


def accept_request_id(value: str | None) -> str:
    """Return the client's request id if it is safe to echo and log, else a new random 32-hex-digit id."""
    if value and _SAFE_ID.fullmatch(value):
        return value
    return os.urandom(16).hex()  # 32 hex digits like uuid4().hex, at a fifth of its cost


class RequestContextLayer:
    """The outermost layer: sets the request id, sends it back as trailing metadata, logs access at DEBUG.

    Args:
        echo: send ``x-request-id`` in the response's trailing metadata.
    """

    def __init__(self, echo: bool = True) -> None:
        self._echo = echo

    def around(self, call: Call) -> _RequestScope:
        """Return the scope of one RPC."""
        return _RequestScope(call, self._echo)


class _RequestScope:
    # A plain class rather than @asynccontextmanager: no generator object per RPC.
    __slots__ = ("_call", "_echo", "_started", "_token")

    def __init__(self, call: Call, echo: bool) -> None:
        self._call = call
        self._echo = echo
        self._token: Token[str] | None = None
        self._started = 0.0

    async def __aenter__(self) -> None:
        call = self._call
        rid = accept_request_id(call.metadata.get(REQUEST_ID_HEADER))
        call.request_id = rid
        self._token = request_id_var.set(rid)
        if access_log.isEnabledFor(logging.DEBUG):
            self._started = time.perf_counter()
        if self._echo:
            # Trailing metadata rides on the status gRPC sends anyway (initial metadata would cost a
            # batch of its own), so it reaches the client on every outcome, stream or unary; aborts
            # keep it (server/aborts.py).
            call.context.set_trailing_metadata(((REQUEST_ID_HEADER, rid),))

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        call = self._call
        if self._started:
            code = code_of(exc, call.context)
            elapsed_ms = (time.perf_counter() - self._started) * 1000
            access_log.debug(
                "%s %s %.2fms",
                call.name,
                code.name,
                elapsed_ms,
                extra={"method": call.name, "code": code.name, "duration_ms": round(elapsed_ms, 3)},
            )
        if self._token is not None:
            try:
                request_id_var.reset(self._token)
            except ValueError:  # left in another context (a cancelled stream): nothing to restore there
                request_id_var.set("")
