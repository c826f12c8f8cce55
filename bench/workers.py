"""Does GRPC__WORKERS=2 raise throughput on this machine? GetHistory (cache hit) at 1 and 2 workers.

Run: ``.venv/bin/python -m bench.workers``. The load comes from two separate processes with 8 channels
each (SO_REUSEPORT spreads connections, not RPCs, so one channel would pin one worker), 4 calls in
flight per channel, for a fixed time. Everything runs on 127.0.0.1; every loop is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import tempfile
import time

from devtools import chaos
from devtools.postgres import PostgresProcess
from devtools.redis import RedisProcess
from devtools.server import ServerProcess

THREADS = 20


def _load(target: str, seconds: float, channels: int, inflight: int, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    import grpc

    from chatmem.v1 import thread_memory_service_pb2 as pb
    from chatmem.v1 import thread_memory_service_pb2_grpc as pb_grpc

    async def run() -> int:
        done = 0
        stop = time.monotonic() + seconds
        chans = [grpc.aio.insecure_channel(target) for _ in range(channels)]

        async def loop(stub: pb_grpc.ThreadMemoryServiceStub, k: int) -> None:
            nonlocal done
            for i in range(10_000_000):
                if time.monotonic() >= stop:
                    return
                await stub.GetHistory(pb.GetHistoryRequest(workspace_id="w", thread_id=f"t{(k + i) % THREADS}"))
                done += 1

        await asyncio.gather(
            *(
                loop(pb_grpc.ThreadMemoryServiceStub(c), j * inflight + k)
                for j, c in enumerate(chans)
                for k in range(inflight)
            )
        )
        for c in chans:
            await c.close()
        return done

    started = time.process_time()
    calls = asyncio.run(run())
    out.put({"calls": calls, "cpu_s": time.process_time() - started})


async def measure(workers: int, seconds: float, pg: PostgresProcess, redis: RedisProcess) -> dict[str, float]:
    """Start a server with ``workers`` processes, preload, and measure two load processes."""
    server = ServerProcess(
        {"DATABASE__URL": pg.url, "REDIS__URL": redis.url, "GRPC__WORKERS": str(workers), "LOG_LEVEL": "WARNING",
         "REDIS__KEY_PREFIX": f"wk{workers}"},
        tempfile.mkdtemp(prefix="chatmem-workers-"),
    )  # fmt: skip
    server.start()
    try:
        await chaos.wait_serving(server.target)
        import grpc

        from chatmem.v1 import resources_pb2 as r
        from chatmem.v1 import thread_memory_service_pb2 as pb
        from chatmem.v1 import thread_memory_service_pb2_grpc as pb_grpc

        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = pb_grpc.ThreadMemoryServiceStub(channel)
            for t in range(THREADS):
                msgs = [r.MessageInput(role=r.ROLE_USER, content="x" * 300) for _ in range(60)]
                await stub.AppendMessages(pb.AppendMessagesRequest(workspace_id="w", thread_id=f"t{t}", messages=msgs))
        ctx = multiprocessing.get_context("spawn")
        out: multiprocessing.Queue = ctx.Queue()  # type: ignore[type-arg]
        procs = [ctx.Process(target=_load, args=(server.target, seconds, 8, 4, out)) for _ in range(2)]
        wall = time.monotonic()
        for p in procs:
            p.start()
        results = [await asyncio.to_thread(out.get, True, seconds + 60) for _ in procs]
        for p in procs:
            p.join(30)
        wall = time.monotonic() - wall
        calls = sum(x["calls"] for x in results)
        return {"workers": workers, "calls": calls, "ops_per_s": round(calls / seconds, 1),
                "loadgen_cores": round(sum(x["cpu_s"] for x in results) / wall, 2)}  # fmt: skip
    finally:
        server.stop()


async def main_async(seconds: float) -> list[dict[str, float]]:
    """Measure 1 and 2 workers on the same Redis and PostgreSQL."""
    redis, pg = RedisProcess(), PostgresProcess()
    redis.start()
    pg.start()
    try:
        return [await measure(1, seconds, pg, redis), await measure(2, seconds, pg, redis)]
    finally:
        redis.close()
        pg.close()


def main(argv: list[str] | None = None) -> int:
    """Print ops/s with 1 and 2 workers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    rows = asyncio.run(main_async(min(args.seconds, 60.0)))
    for row in rows:
        print(json.dumps(row))
    print(
        f"2 workers / 1 worker throughput: {rows[1]['ops_per_s'] / rows[0]['ops_per_s']:.2f}x (nproc={os.cpu_count()})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
