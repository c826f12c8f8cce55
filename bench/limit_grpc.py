"""limit-grpc: a bare grpc.aio server whose only handler returns a fixed, pre-serialized 50-message window.

It registers ``/chatmem.v1.ThreadMemoryService/GetHistory`` through ``grpc.method_handlers_generic_handler``
with identity (None) serializers: the handler receives the request bytes and returns bytes built once at
start-up, with no parsing and no storage. The cost of a call to it is the floor of any Python gRPC server
on this machine. Run as ``python -m bench.limit_grpc --port N``; it serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal

import grpc

from bench.latency import make_contents
from chatmem.v1 import resources_pb2
from chatmem.v1 import thread_memory_service_pb2 as pb

SERVICE = "chatmem.v1.ThreadMemoryService"
METHOD = "GetHistory"
PATH = f"/{SERVICE}/{METHOD}"


def window_response(messages: int = 50, chars: int = 300, seed: int = 1) -> bytes:
    """Return a serialized GetHistoryResponse of ``messages`` messages of ``chars`` characters, served from cache.

    Args:
        messages: how many messages.
        chars: the length of each message's content.
        seed: the random seed of the texts.

    Returns:
        The serialized response.
    """
    contents = make_contents(random.Random(seed), messages, chars)
    response = pb.GetHistoryResponse(
        messages=[
            resources_pb2.Message(
                workspace_id="bench",
                thread_id="base-0000",
                seq=1000 + i,
                role=resources_pb2.ROLE_USER if i % 2 == 0 else resources_pb2.ROLE_ASSISTANT,
                content=text,
            )
            for i, text in enumerate(contents)
        ],
        serving=resources_pb2.ServingInfo(tier=resources_pb2.TIER_CACHE),
    )
    for m in response.messages:
        m.create_time.FromMicroseconds(1_790_000_000_000_000 + m.seq)
    return response.SerializeToString()


async def serve(port: int, messages: int, chars: int) -> None:
    """Serve the fixed response on 127.0.0.1:``port`` until SIGTERM or SIGINT."""
    payload = window_response(messages, chars)

    async def get_history(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return payload

    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {METHOD: grpc.unary_unary_rpc_method_handler(get_history, request_deserializer=None, response_serializer=None)},
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    if server.add_insecure_port(f"127.0.0.1:{port}") == 0:
        raise OSError(f"cannot bind 127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1.0)


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and serve (with uvloop when installed, as the chatmem server does)."""
    parser = argparse.ArgumentParser(prog="python -m bench.limit_grpc", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--messages", type=int, default=50)
    parser.add_argument("--chars", type=int, default=300)
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.port, args.messages, args.chars))
    else:
        with contextlib.suppress(KeyboardInterrupt):
            uvloop.run(serve(args.port, args.messages, args.chars))


if __name__ == "__main__":
    main()
