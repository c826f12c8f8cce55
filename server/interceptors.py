"""The interceptor pipeline: one wrapper per chatmem RPC that runs the layers (context, auth, admission) in order.

Each concern (request context and metrics, authentication, admission) is a ``Layer`` in a module of its
own. ``Pipeline`` is the only ``grpc.aio.ServerInterceptor``: it wraps the *behaviour* of each chatmem
handler, so the layers run in the handler's own task (context variables they set reach the handler and
its logs) and they see the deserialised request. Health and reflection pass through untouched: health
is always open.

A layer refuses a request by raising a ``ChatmemError`` when it is entered; the pipeline turns that
into the rich status. Layers entered before it see the exception leave their ``around`` and can record
its code with ``code_of``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
from grpc_status import rpc_status

from server.errors import ChatmemError

CHATMEM_PREFIX = "/chatmem.v1."


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
    extra: dict[str, Any] = field(default_factory=dict)

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
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


_CODES = {c.value[0]: c for c in grpc.StatusCode}


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    found: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if isinstance(value, str):
            found.setdefault(key.lower(), value)
    return found


class Pipeline(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc ships no stubs for aio
    """Run the layers, outermost first, around every chatmem RPC.

    Args:
        layers: the layers in the order they are entered.
    """

    def __init__(self, layers: Sequence[Layer]) -> None:
        self._layers = tuple(layers)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """Wrap chatmem handlers; pass every other service through."""
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not self._layers or not method.startswith(CHATMEM_PREFIX):
            return handler
        return self._wrap(handler, method)

    def _call(self, method: str, streaming: bool, request: Any, context: grpc.aio.ServicerContext) -> Call:
        service, _, name = method[1:].partition("/")
        return Call(method, service, name, streaming, request, context, _metadata(context))

    @contextlib.asynccontextmanager
    async def _entered(self, call: Call) -> AsyncIterator[None]:
        try:
            async with contextlib.AsyncExitStack() as stack:
                for layer in self._layers:
                    await stack.enter_async_context(layer.around(call))
                yield
        except ChatmemError as exc:
            await call.context.abort_with_status(rpc_status.to_status(exc.to_status()))

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        if handler.unary_unary is not None:
            unary = handler.unary_unary

            async def unary_behaviour(request: Any, context: grpc.aio.ServicerContext) -> Any:
                async with self._entered(self._call(method, False, request, context)):
                    return await unary(request, context)
                raise AssertionError("unreachable: the pipeline aborted")  # abort raises

            return grpc.unary_unary_rpc_method_handler(
                unary_behaviour,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            stream = handler.unary_stream

            async def stream_behaviour(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                async with self._entered(self._call(method, True, request, context)):
                    async for item in stream(request, context):
                        yield item

            return grpc.unary_stream_rpc_method_handler(
                stream_behaviour,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # chatmem has no client-streaming methods
