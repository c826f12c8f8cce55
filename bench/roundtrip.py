"""What one Redis round trip costs inside a grpc.aio handler: limit-grpc's handler, then the same awaiting Redis.

Each variant is the limit-grpc server (a fixed 50-message response, identity serializers) in its own
process, whose handler first awaits something:

- ``none``: nothing (limit-grpc itself);
- ``sleep0``: ``asyncio.sleep(0)`` (one trip through the event loop);
- ``CLIENT/OP``: one Redis command through a client (bench/redis_clients.py): ``redis-py``
  (redis.asyncio, hiredis), ``pipelined`` (chatmem's ``PipelinedRedis``,
  server/storage/redis/connection.py), ``glide`` (valkey-glide) or ``coredis``; OP is ``get`` (GET of
  a 1-byte value) or ``evalsha`` (a script returning a 50-item window). glide and coredis are not
  chatmem requirements: their variants are skipped, with a message, where they are not installed.

A client (a separate process, grpc.aio, the generated stub's serializers) calls it ``--calls`` times
after ``--warmup`` calls, with ``--concurrency`` calls in flight (1 and 32 by default: the pipelined
connection sends the commands of concurrent requests in one write); the figure is the server
process's CPU time per call (utime+stime of all its threads, from /proc). Variants are measured in
interleaved rounds (the order rotates each round) and the best and the spread of the rounds are shown,
so that other load on the machine does not decide. With ``--alone``, each client runs its command
in a process of its own with no gRPC server (``python -m bench.redis_clients``), and the figure is
that process's CPU per command. Run ``python -m bench.roundtrip``; it needs ``redis-server`` (it
starts its own on a free port).
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
import uvloop

from bench.limit_grpc import METHOD, SERVICE, window_response
from bench.redis_clients import CLIENTS, OPS, missing, open_call, seed, version
from chatmem.v1 import thread_memory_service_pb2 as pb
from chatmem.v1 import thread_memory_service_pb2_grpc as pb_grpc
from devtools.ports import free_port
from devtools.redis import RedisProcess

BASELINES = ("none", "sleep0")
CANDIDATES = ("glide", "coredis")
REFERENCE = "pipelined"
MARGIN = 1.10  # "within 10% of its CPU"


async def serve(port: int, redis_port: int, variant: str) -> None:
    """Serve the fixed response on 127.0.0.1:``port``, awaiting ``variant`` first, until SIGTERM."""
    payload = window_response()
    async with contextlib.AsyncExitStack() as stack:
        call = None
        if variant not in BASELINES:
            client, op = variant.split("/")
            call = await stack.enter_async_context(open_call(client, op, redis_port))

        if call is not None:

            async def get_history(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
                await call()
                return payload

        elif variant == "sleep0":

            async def get_history(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
                await asyncio.sleep(0)
                return payload

        else:

            async def get_history(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
                return payload

        rpc = grpc.unary_unary_rpc_method_handler(get_history)
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {METHOD: rpc}),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await server.stop(0.5)


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _drive(port: int, proc: subprocess.Popen[bytes], calls: int, warmup: int, concurrency: int) -> float:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server process exited with {proc.returncode}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(channel.channel_ready(), 0.5)
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the server process did not answer within 30 s")
        stub = pb_grpc.ThreadMemoryServiceStub(channel)
        request = pb.GetHistoryRequest(thread_id="t", limit=50)

        async def worker(n: int) -> None:
            for _ in range(n):
                await stub.GetHistory(request, timeout=5)

        async def run(total: int) -> None:
            share, extra = divmod(total, concurrency)
            await asyncio.gather(*(worker(share + (i < extra)) for i in range(concurrency)))

        await run(warmup)
        before = _cpu_s(proc.pid)
        await run(calls)
        return (_cpu_s(proc.pid) - before) / calls * 1e6


def measure(variant: str, redis_port: int, calls: int, warmup: int, concurrency: int = 1) -> float:
    """Return the server's CPU microseconds per call for one variant at ``concurrency`` calls in flight."""
    port = free_port()
    argv = [sys.executable, "-m", "bench.roundtrip", "--serve", variant, "--port", str(port)]
    proc = subprocess.Popen([*argv, "--redis-port", str(redis_port)])
    try:
        return uvloop.run(_drive(port, proc, calls, warmup, concurrency))
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)


def measure_alone(variant: str, redis_port: int, calls: int, warmup: int, concurrency: int = 1) -> float:
    """Return one client's CPU microseconds per command in a process of its own, with no gRPC server around it."""
    argv = [sys.executable, "-m", "bench.redis_clients", variant, "--port", str(redis_port)]
    argv += ["--calls", str(calls), "--warmup", str(warmup), "--concurrency", str(concurrency)]
    return float(subprocess.run(argv, check=True, capture_output=True, text=True, timeout=120).stdout)


def _variants(clients: list[str], ops: list[str], alone: bool) -> list[str]:
    variants = [] if alone else ["none"] + [c for c in clients if c in BASELINES]
    usable = []
    for client in clients:
        if client in BASELINES:
            continue
        if package := missing(client):
            print(f"skipped {client}: {package} is not installed here (pip install {package} to measure it)")
        else:
            usable.append(client)
    return variants + [f"{client}/{op}" for op in ops for client in usable]


def _load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def report(results: dict[tuple[int, str], list[float]], concurrency: list[int], ops: list[str]) -> None:
    """Print every variant's rounds, best and spread, then each candidate client against the pipelined one."""

    def floor(c: int) -> float:
        return min(results.get((c, "none"), [0.0]))

    for c in concurrency:
        print(f"concurrency {c}: CPU per call, µs (rounds; best; spread max-min; best over none)")
        for (cc, variant), runs in results.items():
            if cc != c:
                continue
            best = min(runs)
            shown = ", ".join(f"{r:.0f}" for r in runs)
            print(
                f"  {variant:18s} {shown:24s} best {best:4.0f}  spread {max(runs) - best:3.0f}  +{best - floor(c):.0f}"
            )
    print(f"against {REFERENCE} (best of rounds; within 10% means best <= {MARGIN:.2f}x {REFERENCE}'s best):")
    for op in ops:
        for c in concurrency:
            ref = results.get((c, f"{REFERENCE}/{op}"))
            if ref is None:
                continue
            for client in CANDIDATES:
                other = results.get((c, f"{client}/{op}"))
                if other is None:
                    continue
                ratio = min(other) / min(ref)
                verdict = "within 10%" if ratio <= MARGIN else "NOT within 10%"
                print(
                    f"  {op:8s} c={c:<3d} {client:8s} {min(other):.0f} vs {min(ref):.0f} µs: {ratio:.2f}x ({verdict}); "
                    f"over none +{min(other) - floor(c):.0f} vs +{min(ref) - floor(c):.0f} µs"
                )


def main(argv: list[str] | None = None) -> None:
    """Measure every variant (or serve one, when run as a variant's server process)."""
    parser = argparse.ArgumentParser(prog="python -m bench.roundtrip", description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3, help="measure every variant this many times, interleaved")
    parser.add_argument("--concurrency", default="1,32", help="calls in flight, comma-separated")
    parser.add_argument("--clients", default=",".join(("sleep0", *CLIENTS)), help="comma-separated")
    parser.add_argument("--ops", default=",".join(OPS), help="comma-separated")
    parser.add_argument("--alone", action="store_true", help="measure each client's CPU per command, no gRPC server")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--redis-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        uvloop.run(serve(args.port, args.redis_port, args.serve))
        return
    clients = args.clients.split(",")
    ops = args.ops.split(",")
    concurrency = [int(c) for c in args.concurrency.split(",")]
    unknown = set(clients) - set(BASELINES) - set(CLIENTS) or set(ops) - set(OPS)
    if unknown:
        parser.error(f"unknown: {', '.join(sorted(unknown))}")
    variants = _variants(clients, ops, args.alone)
    how = measure_alone if args.alone else measure
    print("clients: " + "; ".join(version(c) for c in clients if c not in BASELINES and not missing(c)))
    print(f"{_load()} at the start")
    redis = RedisProcess()
    redis.start()
    try:
        uvloop.run(seed(redis.port))
        results: dict[tuple[int, str], list[float]] = {(c, v): [] for c in concurrency for v in variants}
        started = time.monotonic()
        for r in range(args.rounds):
            for c in concurrency:
                shift = r % len(variants)
                for variant in variants[shift:] + variants[:shift]:
                    results[(c, variant)].append(how(variant, redis.port, args.calls, args.warmup, c))
        print(f"{args.calls} calls after {args.warmup} warm-up per run, {args.rounds} interleaved rounds")
        report(results, concurrency, ops)
        print(f"took {time.monotonic() - started:.0f} s; {_load()} at the end")
    finally:
        redis.close()


if __name__ == "__main__":
    main()
