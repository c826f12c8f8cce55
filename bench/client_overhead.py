"""Per-call overhead of each client wrapper over its raw generated stub (Python, TypeScript, Go).

One ``python -m server`` process on 127.0.0.1 (embedded SQLite, no Redis) holds a thread of 20 messages.
Each language's program calls GetHistory on it ``--calls`` times through the raw generated stub, then
as many times through the wrapper (``MemoryClient.get_history``, ``memory.getHistory``,
``Client.GetHistory``), on one connection, for ``--rounds`` rounds after a warm-up round of each (raw
first in even rounds, the wrapper first in odd ones). Two figures per call (median of the rounds): wall
time, and the client process's CPU time (user + system), which the server's share of the round trip
does not blur; the overhead is wrapper minus raw.
The languages run one after another, never at once. It prints the load average before and after.
Run ``.venv/bin/python -m bench.client_overhead`` after ``make install`` (node and go as for make test).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import pathlib
import statistics
import subprocess
import tempfile
import time
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chatmem import MemoryClient
from chatmem.v1 import thread_memory_service_pb2 as pb
from devtools import golang
from devtools.server import ServerProcess

ROOT = pathlib.Path(__file__).resolve().parent.parent
TS = ROOT / "clients" / "typescript"
THREAD, WORKSPACE = "bench", "bench"


async def wait_serving(target: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    async with grpc.aio.insecure_channel(target) as channel:
        while True:
            try:
                reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("the server did not start")
            await asyncio.sleep(0.1)


async def python_rounds(target: str, calls: int, rounds: int) -> dict[str, list[float]]:
    async with MemoryClient.connect(target, workspace_id=WORKSPACE) as memory:
        request = pb.GetHistoryRequest(workspace_id=WORKSPACE, thread_id=THREAD)

        async def raw() -> None:
            await memory.raw.threads.GetHistory(request, timeout=10)

        async def wrapped() -> None:
            await memory.get_history(THREAD)

        async def timed(body: Any) -> tuple[float, float]:
            start, cpu = time.perf_counter(), time.process_time()
            for _ in range(calls):
                await body()
            return (time.perf_counter() - start) / calls * 1e6, (time.process_time() - cpu) / calls * 1e6

        await timed(raw)
        await timed(wrapped)
        out: dict[str, list[float]] = {"raw": [], "wrapper": [], "raw_cpu": [], "wrapper_cpu": []}
        for r in range(rounds):
            order = (("raw", raw), ("wrapper", wrapped))
            for name, body in order if r % 2 == 0 else order[::-1]:  # alternate, so neither always goes first
                wall, cpu = await timed(body)
                out[name].append(wall)
                out[f"{name}_cpu"].append(cpu)
        return out


def program(argv: list[str], cwd: pathlib.Path, env: dict[str, str] | None = None) -> dict[str, list[float]]:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=True, timeout=600)
    return dict(json.loads(done.stdout))


def build() -> pathlib.Path:
    subprocess.run(["node", "node_modules/typescript/bin/tsc", "-p", "tsconfig.json"], cwd=TS, check=True)
    binary = golang.GOPATH / "bin" / "chatmem-bench"
    where = golang.package_dir()
    subprocess.run(
        ["go", "build", "-o", str(binary), "./cmd/chatmem-bench"],
        cwd=where,
        env={**golang.env(), "PWD": str(where)},
        check=True,
    )
    return binary


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    go_binary = build()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess({"DATABASE__SQLITE_PATH": f"{tmp}/bench.db", "LOG_LEVEL": "WARNING"}, tmp)
        server.start()
        try:
            await wait_serving(server.target)
            async with MemoryClient.connect(server.target, workspace_id=WORKSPACE) as memory:
                for i in range(10):
                    await memory.append(THREAD, "user", f"question {i} " + "x" * 200)
                    await memory.append(THREAD, "assistant", f"answer {i} " + "y" * 200)
            results = {"python": await python_rounds(server.target, args.calls, args.rounds)}
            bench_args = [server.target, THREAD, WORKSPACE, str(args.calls), str(args.rounds)]
            results["typescript"] = program(["node", "dist/bench/overhead.js", *bench_args], TS)
            results["go"] = program([str(go_binary), *bench_args], ROOT)
        finally:
            server.stop()
    load_after = os.getloadavg()
    print(f"GetHistory of 20 messages, {args.calls} calls x {args.rounds} rounds per variant, one connection")
    print(f"{'client':<12}{'wall us/call raw / wrapper (diff)':>36}{'client CPU us/call raw / wrapper (diff)':>42}")
    summary = {}
    for language, rounds in results.items():
        m = {k: statistics.median(v) for k, v in rounds.items()}
        summary[language] = {**{f"{k}_us": v for k, v in m.items()}, "rounds": rounds}
        wall = f"{m['raw']:.0f} / {m['wrapper']:.0f} ({m['wrapper'] - m['raw']:+.0f})"
        cpu = f"{m['raw_cpu']:.0f} / {m['wrapper_cpu']:.0f} ({m['wrapper_cpu'] - m['raw_cpu']:+.0f})"
        print(f"{language:<12}{wall:>36}{cpu:>42}")
    before, after = (f"{load[0]:.2f} {load[1]:.2f}" for load in (load_before, load_after))
    print(f"load average (1 and 5 min): before {before}, after {after}")
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    record = {"calls": args.calls, "rounds": args.rounds, "load_before": load_before, "load_after": load_after}
    (ROOT / "bench" / "results" / f"client-overhead-{stamp}.json").write_text(
        json.dumps({**record, "results": summary}, indent=2) + "\n"
    )


if __name__ == "__main__":
    asyncio.run(main())
