"""The layer pipeline: layer order, refusal as a rich status, streams, and services registered without it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from server.errors import PermissionDeniedError
from server.interceptors import Call, Pipeline, code_of


class Recording:
    """A layer that records enter/exit and the code it saw, and refuses requests whose payload says so."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    @contextlib.asynccontextmanager
    async def around(self, call: Call) -> AsyncIterator[None]:
        self.log.append(f"{self.name}>{call.name}:{call.metadata.get('x-test', '')}")
        exc: BaseException | None = None
        try:
            if call.request == b"deny-" + self.name.encode():
                raise PermissionDeniedError(f"{self.name} says no")
            if call.request == b"crash-" + self.name.encode():
                raise RuntimeError(f"{self.name} has a bug")
            yield
        except BaseException as e:
            exc = e
            raise
        finally:
            self.log.append(f"{self.name}<{code_of(exc, call.context).name}")


def _ident(b: bytes) -> bytes:
    return b


async def _echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


async def _count(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    for i in range(3):
        yield str(i).encode()


def _handlers() -> dict[str, grpc.RpcMethodHandler]:
    return {
        "Echo": grpc.unary_unary_rpc_method_handler(_echo, _ident, _ident),
        "Count": grpc.unary_stream_rpc_method_handler(_count, _ident, _ident),
    }


@pytest.fixture
async def served() -> AsyncIterator[tuple[grpc.aio.Channel, list[str]]]:
    log: list[str] = []
    pipeline = Pipeline([Recording("a", log), Recording("b", log)])
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            pipeline.wrap_service("chatmem.v1.Fake", _handlers()),
            grpc.method_handlers_generic_handler("other.Fake", _handlers()),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield channel, log
    await channel.close()
    await server.stop(0)


async def test_layers_run_outermost_first_and_see_the_code(served: Any) -> None:
    channel, log = served
    echo = channel.unary_unary("/chatmem.v1.Fake/Echo", _ident, _ident)
    assert await echo(b"hi", metadata=(("x-test", "v"),)) == b"hi"
    assert log == ["a>Echo:v", "b>Echo:v", "b<OK", "a<OK"]


async def test_a_refusing_layer_stops_the_call_with_its_status(served: Any) -> None:
    channel, log = served
    echo = channel.unary_unary("/chatmem.v1.Fake/Echo", _ident, _ident)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await echo(b"deny-b")
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    status = rpc_status.from_call(err.value)  # type: ignore[arg-type]
    assert status is not None and status.message == "b says no"
    assert log == ["a>Echo:", "b>Echo:", "b<PERMISSION_DENIED", "a<PERMISSION_DENIED"]


async def test_a_layer_that_crashes_ends_the_call_internal_with_error_info(served: Any) -> None:
    channel, log = served
    echo = channel.unary_unary("/chatmem.v1.Fake/Echo", _ident, _ident)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await echo(b"crash-b")
    assert err.value.code() == grpc.StatusCode.INTERNAL
    status = rpc_status.from_call(err.value)  # type: ignore[arg-type]
    info = error_details_pb2.ErrorInfo()
    assert status is not None and status.details[0].Unpack(info)
    assert (info.reason, info.domain) == ("INTERNAL", "chatmem.dev")
    assert "has a bug" not in status.message
    assert log[-1] == "a<INTERNAL"


async def test_streams_are_wrapped_for_their_whole_length(served: Any) -> None:
    channel, log = served
    count = channel.unary_stream("/chatmem.v1.Fake/Count", _ident, _ident)
    assert [m async for m in count(b"x")] == [b"0", b"1", b"2"]
    assert log == ["a>Count:", "b>Count:", "b<OK", "a<OK"]


def test_no_layers_means_the_handlers_as_they_are() -> None:
    handler = grpc.unary_unary_rpc_method_handler(_echo, _ident, _ident)
    assert Pipeline([]).wrap(handler, "/chatmem.v1.Fake/Echo") is handler


async def test_services_registered_without_it_pass_through(served: Any) -> None:
    channel, log = served
    echo = channel.unary_unary("/other.Fake/Echo", _ident, _ident)
    assert await echo(b"deny-a") == b"deny-a"
    assert log == []


class _Ended:
    """The context of an RPC that ended without a status set by the handler, with ``remaining`` seconds left."""

    def __init__(self, remaining: float | None) -> None:
        self.remaining = remaining

    def code(self) -> None:
        return None

    def time_remaining(self) -> float | None:
        return self.remaining


@pytest.mark.parametrize(
    ("remaining", "code"),
    [(0.0, grpc.StatusCode.DEADLINE_EXCEEDED), (-0.01, grpc.StatusCode.DEADLINE_EXCEEDED),
     (2.5, grpc.StatusCode.CANCELLED), (None, grpc.StatusCode.CANCELLED)],
)  # fmt: skip
def test_a_cancel_at_the_deadline_is_recorded_as_deadline_exceeded(
    remaining: float | None, code: grpc.StatusCode
) -> None:
    # grpc cancels the handler's task when the client's deadline passes; layers must not record a cancel.
    assert code_of(asyncio.CancelledError(), _Ended(remaining)) is code  # type: ignore[arg-type]
