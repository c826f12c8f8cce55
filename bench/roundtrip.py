"""What one Redis round trip costs inside a grpc.aio handler: limit-grpc's handler, then the same awaiting Redis.

Each variant is the limit-grpc server (a fixed 50-message response, identity serializers) in its own
process, whose handler first awaits something:

- ``none``: nothing (limit-grpc itself);
- ``sleep0``: ``asyncio.sleep(0)`` (one trip through the event loop);
- ``redis-py``: a GET through redis.asyncio (hiredis), as chatmem's cache did before REDIS__AUTOPIPELINE;
- ``pipelined``: the same GET through chatmem's ``PipelinedRedis`` (server/storage/redis/connection.py).

One client (a separate process, the generated stub's serializers) calls it ``--calls`` times after
``--warmup`` calls; the figure is the server process's CPU time per call (utime+stime from /proc).
Run ``python -m bench.roundtrip``; it needs ``redis-server`` (it starts its own on a free port).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time

import grpc

from bench.limit_grpc import METHOD, SERVICE, window_response
from chatmem.v1 import thread_memory_service_pb2 as pb
from chatmem.v1 import thread_memory_service_pb2_grpc as pb_grpc
from devtools.ports import free_port
from devtools.redis import RedisProcess

VARIANTS = ("none", "sleep0", "redis-py", "pipelined")


async def serve(port: int, redis_port: int, variant: str) -> None:
    """Serve the fixed response on 127.0.0.1:``port``, awaiting ``variant`` first, until SIGTERM."""
    import redis.asyncio as aioredis

    from server.storage.redis.connection import PipelinedRedis

    payload = window_response()
    client = aioredis.Redis(port=redis_port)
    pipelined = PipelinedRedis(port=redis_port, timeout_s=1.0, connect_timeout_s=1.0)
    await client.set("k", b"v")

    async def get_history(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        if variant == "sleep0":
            await asyncio.sleep(0)
        elif variant == "redis-py":
            await client.get("k")
        elif variant == "pipelined":
            await pipelined.execute(b"GET", b"k")
        return payload

    handler = grpc.method_handlers_generic_handler(SERVICE, {METHOD: grpc.unary_unary_rpc_method_handler(get_history)})
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(0.5)
    await pipelined.aclose()
    await client.aclose()


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(variant: str, redis_port: int, calls: int, warmup: int) -> float:
    """Return the server's CPU microseconds per call for one variant."""
    port = free_port()
    argv = [sys.executable, "-m", "bench.roundtrip", "--serve", variant, "--port", str(port)]
    proc = subprocess.Popen([*argv, "--redis-port", str(redis_port)])
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=30)
        stub = pb_grpc.ThreadMemoryServiceStub(channel)
        request = pb.GetHistoryRequest(thread_id="t", limit=50)
        for _ in range(warmup):
            stub.GetHistory(request, timeout=5)
        before = _cpu_s(proc.pid)
        for _ in range(calls):
            stub.GetHistory(request, timeout=5)
        used = _cpu_s(proc.pid) - before
        channel.close()
        return used / calls * 1e6
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)


def main(argv: list[str] | None = None) -> None:
    """Measure every variant (or serve one, when run as a variant's server process)."""
    parser = argparse.ArgumentParser(prog="python -m bench.roundtrip", description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2, help="measure every variant this many times, interleaved")
    parser.add_argument("--serve", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--redis-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        import uvloop

        uvloop.run(serve(args.port, args.redis_port, args.serve))
        return
    redis = RedisProcess()
    redis.start()
    try:
        results: dict[str, list[float]] = {v: [] for v in VARIANTS}
        started = time.monotonic()
        for _ in range(args.rounds):
            for variant in VARIANTS:
                results[variant].append(measure(variant, redis.port, args.calls, args.warmup))
        floor = min(results["none"])
        print(f"server CPU per call, {args.calls} calls after {args.warmup} warm-up, {args.rounds} rounds:")
        for variant, runs in results.items():
            best = min(runs)
            shown = ", ".join(f"{r:.0f}" for r in runs)
            print(f"  {variant:10s} {shown} µs  (best {best:.0f} µs, +{best - floor:.0f} µs over none)")
        print(f"took {time.monotonic() - started:.0f} s")
    finally:
        redis.close()


if __name__ == "__main__":
    main()
