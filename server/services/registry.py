"""One way to add a chatmem service to a server: handlers built from its descriptor, bad request bytes refused.

grpc answers a request whose bytes fail to parse with UNKNOWN ("Unexpected DecodeError"), before any
handler runs. Here the deserializer never raises: it hands the handler an ``Undecodable`` marker, and the
handler refuses it with INVALID_ARGUMENT and a google.rpc.BadRequest, as it does any other bad input.
The marker goes through the interceptor pipeline like a request, so authentication still runs first.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, ServiceDescriptor
from google.protobuf.message import DecodeError, Message

from server.aborts import abort_with_error
from server.errors import InvalidArgumentError
from server.interceptors import Pipeline

# The attribute a behaviour carries when it refuses an ``Undecodable`` request itself.
REFUSES_UNDECODABLE = "refuses_undecodable"

Unary = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
Streaming = Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]


@dataclass(frozen=True, slots=True)
class Undecodable:
    """A request whose bytes are not a valid message of the method's request type.

    Attributes:
        type_name: the full name of the expected request message.
        reason: what the protobuf parser reported.
    """

    type_name: str
    reason: str

    def error(self) -> InvalidArgumentError:
        """Return the INVALID_ARGUMENT this request gets."""
        return InvalidArgumentError.single("request", f"is not a valid {self.type_name} message: {self.reason}")


def request_deserializer(request_type: Descriptor) -> Callable[[bytes], Message | Undecodable]:
    """Return a deserializer for ``request_type`` that turns a parse failure into an ``Undecodable``."""
    cls = message_factory.GetMessageClass(request_type)
    name = request_type.full_name

    def deserialize(data: bytes) -> Message | Undecodable:
        try:
            return cls.FromString(data)
        except DecodeError as exc:
            # The parser's message names the type again; keep only its reason.
            return Undecodable(name, str(exc).rpartition(": ")[2] or "malformed")

    return deserialize


def _bytes_or_message(response: bytes | Message) -> bytes:
    # Handlers may return pre-serialised bytes; an error path may still produce a message.
    return response if isinstance(response, bytes) else response.SerializeToString()


def _serialize(response: Message) -> bytes:
    return response.SerializeToString()


async def _refuse(request: Undecodable, context: grpc.aio.ServicerContext) -> None:
    await abort_with_error(context, request.error())


def _guard_unary(behaviour: Unary) -> Unary:
    async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, Undecodable):
            await _refuse(request, context)
        return await behaviour(request, context)

    return guarded


def _guard_stream(behaviour: Streaming) -> Streaming:
    async def guarded(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        if isinstance(request, Undecodable):
            await _refuse(request, context)
        async for item in behaviour(request, context):
            yield item

    return guarded


def register(
    server: grpc.aio.Server,
    servicer: object,
    service: ServiceDescriptor,
    *,
    bytes_methods: Collection[str] = (),
    pipeline: Pipeline,
) -> None:
    """Add ``servicer``'s methods for ``service`` to ``server``.

    Like the generated ``add_XServicer_to_server``, the handlers follow the protos; unlike it, a request
    that does not parse is INVALID_ARGUMENT, and some methods may return pre-serialised bytes.

    Args:
        server: the server to add the service to.
        servicer: an object with one coroutine (or async generator, for server streaming) per method.
        service: the service's descriptor (from the generated ``*_pb2`` module).
        bytes_methods: names of methods whose handlers may return the serialised response as bytes.
        pipeline: the layers to run around every method (wrapped here, once). Required, so that a
            service cannot be added without authentication by leaving it out; ``Pipeline([])`` for none.
    """
    handlers = {}
    for method in service.methods:
        if method.client_streaming:
            raise ValueError(f"{method.full_name}: client streaming is not supported")
        serialize = _bytes_or_message if method.name in bytes_methods else _serialize
        behaviour = getattr(servicer, method.name)
        # The handler wrappers (server/services/handler.py) refuse an Undecodable themselves, inside
        # the same coroutine: one await less per RPC than a separate guard.
        guarded = getattr(behaviour, REFUSES_UNDECODABLE, False)
        deserialize = request_deserializer(method.input_type)
        if method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                behaviour if guarded else _guard_stream(behaviour),
                request_deserializer=deserialize,
                response_serializer=serialize,
            )
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                behaviour if guarded else _guard_unary(behaviour),
                request_deserializer=deserialize,
                response_serializer=serialize,
            )
    server.add_generic_rpc_handlers((pipeline.wrap_service(service.full_name, handlers),))
