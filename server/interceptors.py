"""The layer pipeline: one wrapper per chatmem RPC, built at start-up, that runs the layers (context, auth, admission).

Each concern (request context and metrics, authentication, admission) is a ``Layer`` in a module of its
own. ``Pipeline`` wraps the *behaviour* of each chatmem handler once, when the service is registered
(``server/services/registry.py``), so the layers run in the handler's own task (context variables they
set reach the handler and its logs) and they see the deserialised request. It is not a
``grpc.aio.ServerInterceptor``: an interceptor costs a coroutine and a handler lookup on every RPC, and
with no layers configured the handlers are registered as they are. Health and reflection are registered
without it: health is always open.

A layer refuses a request by raising a ``ChatmemError`` when it is entered; the pipeline turns that
into the rich status. Layers entered before it see the exception leave their ``around`` and can record
its code with ``code_of``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from server.aborts import abort_with_error
from server.errors import ChatmemError, InternalError

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Principal:
    """Who is calling: the workspace the credential is bound to, its role, and an id for audit logs."""

    workspace_id: str
    role: str
    subject: str


@dataclass(slots=True)
class Call:
    """What the layers know about one chatmem RPC; layers fill in what they learn (request id, principal)."""

    method: str
    service: str
    name: str
    streaming: bool
    request: Any
    context: grpc.aio.ServicerContext
    metadata: dict[str, str]
    request_id: str = ""
    principal: Principal | None = None

    @property
    def workspace_id(self) -> str:
        """The workspace the request acts in (after auth has resolved it), or "" for none named."""
        return str(getattr(self.request, "workspace_id", "") or "")


class Layer(Protocol):
    """One concern of the pipeline."""

    def around(self, call: Call) -> contextlib.AbstractAsyncContextManager[None]:
        """Return a context manager entered before the handler runs and left after it finishes."""
        ...


def code_of(exc: BaseException | None, context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    """Return the status an RPC ended with, seen from a layer's exit (``exc``: what left the block)."""
    if isinstance(exc, ChatmemError):
        return _CODES.get(exc.code, grpc.StatusCode.UNKNOWN)
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if exc is None:
        return grpc.StatusCode.OK
    if isinstance(exc, asyncio.CancelledError):
        # grpc cancels the handler when the client's deadline passes (handler.py sets no timer of its
        # own then): that is a DEADLINE_EXCEEDED, which the client saw, not a cancel by the client.
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED
    if isinstance(exc, Exception) and not isinstance(exc, grpc.aio.AbortError):
        return grpc.StatusCode.INTERNAL  # a layer's bug, which the pipeline ends as INTERNAL (see _leave)
    return grpc.StatusCode.UNKNOWN


_CODES = {c.value[0]: c for c in grpc.StatusCode}


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    found: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if isinstance(value, str):
            found.setdefault(key.lower(), value)
    return found


# How long a stream whose write failed waits for gRPC to report the client's cancel (it comes within
# milliseconds); a write that failed for any other reason is re-raised after it.
CLOSE_WAIT_S = 2.0


async def _write(context: grpc.aio.ServicerContext, item: Any) -> None:
    """Send one stream response; a send that failed because the client went away ends the RPC quietly.

    A client that cancels mid-stream fails the pending send (grpc's internal ExecuteBatchError) and
    closes the call. Both reach the event loop, in either order. Raised before the close is seen,
    grpc logs the failed send as an ERROR with a traceback, although a cancelled stream is normal
    (the cancel-and-resume pattern). So wait here for the close: gRPC then cancels this task, which it
    logs at DEBUG only.
    """
    try:
        await context.write(item)
    except grpc.aio.AbortError:
        raise
    except Exception:
        if not context.done():
            await asyncio.sleep(CLOSE_WAIT_S)  # cancelled here when the client's close arrives
        raise


class Pipeline:
    """Run the layers, outermost first, around every chatmem RPC.

    Args:
        layers: the layers in the order they are entered.
    """

    def __init__(self, layers: Sequence[Layer]) -> None:
        self._layers = tuple(layers)

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """Return ``handler`` with the layers around it (``handler`` itself when there are none).

        Args:
            handler: the method's handler, as built for registration.
            method: the full method path, ``/package.Service/Method``.
        """
        if not self._layers:
            return handler
        return self._wrap(handler, method)

    def wrap_service(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> grpc.GenericRpcHandler:
        """Return the generic handler of ``service`` with every method wrapped.

        Args:
            service: the full service name.
            handlers: the method handlers by method name.
        """
        wrapped = {name: self.wrap(h, f"/{service}/{name}") for name, h in handlers.items()}
        return grpc.method_handlers_generic_handler(service, wrapped)

    async def _enter(self, call: Call) -> list[contextlib.AbstractAsyncContextManager[None]]:
        entered: list[contextlib.AbstractAsyncContextManager[None]] = []
        try:
            for layer in self._layers:
                scope = layer.around(call)
                await scope.__aenter__()
                entered.append(scope)
        except BaseException as exc:
            await self._leave(entered, exc, call, from_layer=True)
            raise AssertionError("unreachable: _leave re-raises") from exc
        return entered

    async def _leave(
        self,
        entered: list[contextlib.AbstractAsyncContextManager[None]],
        exc: BaseException | None,
        call: Call,
        from_layer: bool = False,
    ) -> None:
        # Innermost first, as nested ``async with`` blocks would; a layer that raises replaces the error.
        for scope in reversed(entered):
            try:
                await scope.__aexit__(type(exc) if exc else None, exc, exc.__traceback__ if exc else None)
            except BaseException as raised:  # noqa: BLE001 - passed on below, like an async with block
                from_layer = from_layer or raised is not exc
                exc = raised
        if isinstance(exc, ChatmemError):
            await abort_with_error(call.context, exc)  # raises
        if from_layer and isinstance(exc, Exception) and not isinstance(exc, grpc.aio.AbortError):
            # A bug in a layer: INTERNAL with its ErrorInfo, as the handler wrapper does, not gRPC's bare
            # UNKNOWN. Errors of the handler itself pass on as they are (it has mapped them already).
            log.error("unexpected error in a layer of %s", call.method, exc_info=exc)
            await abort_with_error(call.context, InternalError("internal error; see the server log"))
        if exc is not None:
            raise exc

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        service, _, name = method[1:].partition("/")

        def call_of(request: Any, context: grpc.aio.ServicerContext, streaming: bool) -> Call:
            return Call(method, service, name, streaming, request, context, _metadata(context))

        if handler.unary_unary is not None:
            unary = handler.unary_unary

            async def unary_behaviour(request: Any, context: grpc.aio.ServicerContext) -> Any:
                call = call_of(request, context, False)
                entered = await self._enter(call)
                try:
                    response = await unary(request, context)
                except BaseException as exc:
                    await self._leave(entered, exc, call)
                    raise AssertionError("unreachable: _leave re-raises") from exc
                await self._leave(entered, None, call)
                return response

            return grpc.unary_unary_rpc_method_handler(
                unary_behaviour,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            stream = handler.unary_stream

            # A coroutine that writes each response itself (grpc's reader-writer form), not an async
            # generator: a write that fails because the client cancelled is then seen here (see _write).
            async def stream_behaviour(request: Any, context: grpc.aio.ServicerContext) -> None:
                call = call_of(request, context, True)
                entered = await self._enter(call)
                try:
                    async with contextlib.aclosing(stream(request, context)) as responses:
                        async for item in responses:
                            await _write(context, item)
                except BaseException as exc:
                    await self._leave(entered, exc, call)
                    raise AssertionError("unreachable: _leave re-raises") from exc
                await self._leave(entered, None, call)

            return grpc.unary_stream_rpc_method_handler(
                stream_behaviour,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # chatmem has no client-streaming methods
