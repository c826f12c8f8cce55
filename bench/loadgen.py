"""A load generator process of the benchmark harness: ``python -m bench.loadgen``, driven over stdin/stdout.

The harness (``python -m bench``) starts one or more of these, apart from every server so that the client
does not starve them, and sends one JSON command a line; each gets one JSON reply a line:

- ``open``: connect to the targets (``{"workload", "targets": {name: spec}, "max_workers"}``);
- ``preload``: load the targets' thread sets;
- ``prepare``: untimed set-up of a phase;
- ``phase``: run ``op`` on ``target`` with this process's share of the workers: warm up until ``t_start``,
  then measure until ``t_end`` (``time.monotonic()``, the same clock in every process on Linux), at most
  ``max_ops`` calls. The reply holds the latencies (µs) of the calls that completed inside the window;
- ``close``.

Everything the libraries print goes to stderr: stdout carries the protocol only.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TextIO

import grpc

from bench.targets import EXECUTOR_THREADS, Meter, Target, build
from bench.workload import Workload

ERROR_PAUSE_S = 0.01


def error_name(exc: BaseException) -> str:
    """A failed call's name in the report: its gRPC status (DEADLINE_EXCEEDED, ...), else its exception class."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return str(exc.code().name)
    return type(exc).__name__


class Loadgen:
    """The state of one load generator process: its open targets."""

    def __init__(self) -> None:
        self.targets: dict[str, Target] = {}
        self.failed: dict[str, str] = {}

    async def handle(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Run one command and return its reply."""
        cmd = msg["cmd"]
        if cmd == "open":
            return await self.open(msg)
        if cmd == "preload":
            return await self.preload(msg["targets"])
        if cmd == "prepare":
            target = self.targets[msg["target"]]
            await target.prepare(msg["op"], msg["workers"], msg["concurrency"])
            return {"ok": True}
        if cmd == "phase":
            return await self.phase(msg)
        if cmd == "close":
            for target in self.targets.values():
                try:
                    await target.close()
                except Exception as exc:  # noqa: BLE001 - closing is best effort
                    print(f"closing {target.name}: {exc!r}", file=sys.stderr)
            return {"ok": True}
        raise ValueError(f"unknown command {cmd!r}")

    async def open(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Build and connect every target; a target that fails is reported, not fatal."""
        workload = Workload.from_json(msg["workload"])
        errors: dict[str, str] = {}
        for name, spec in msg["targets"].items():
            target = build(name, spec, workload)
            try:
                await asyncio.wait_for(target.open(msg["max_workers"]), msg.get("timeout_s", 120))
            except Exception as exc:  # noqa: BLE001 - reported as the target's unavailability
                errors[name] = f"{type(exc).__name__}: {exc}"
                print(traceback.format_exc(), file=sys.stderr)
            else:
                self.targets[name] = target
        return {"ok": True, "errors": errors}

    async def preload(self, names: list[str]) -> dict[str, Any]:
        """Preload the named targets concurrently; report each one's result or error."""

        async def one(name: str) -> tuple[str, dict[str, Any]]:
            started = time.perf_counter()
            try:
                done = await self.targets[name].preload()
            except Exception as exc:  # noqa: BLE001 - reported as the target's unavailability
                print(traceback.format_exc(), file=sys.stderr)
                return name, {"error": f"{type(exc).__name__}: {exc}"}
            return name, {**done, "wall_s": round(time.perf_counter() - started, 2)}

        results = await asyncio.gather(*(one(n) for n in names if n in self.targets))
        return {"ok": True, "results": dict(results)}

    async def phase(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Warm up until t_start, measure until t_end; return the window's latencies, units, errors and tags."""
        target = self.targets[msg["target"]]
        op, concurrency, workers = msg["op"], msg["concurrency"], msg["workers"]
        t_start, t_end = msg["t_start"], msg["t_end"]
        per_worker = max(1, math.ceil(msg["max_ops"] / concurrency))
        meter = Meter(t_start, t_end)
        per_message = op in target.per_message_ops
        latencies: list[int] = []
        tags: dict[str, int] = {}
        errors: dict[str, int] = {}
        first_error = ""
        warmup_calls = 0
        hit_max = False

        async def worker(local: int, global_index: int) -> None:
            nonlocal first_error, warmup_calls, hit_max
            call = target.call(op, global_index, local, concurrency, msg["phase"])
            i = 0
            while i < per_worker and time.monotonic() < t_end:
                try:
                    elapsed, found = await call(i, meter)
                except Exception as exc:  # noqa: BLE001 - counted and reported, the phase goes on
                    name = error_name(exc)
                    errors[name] = errors.get(name, 0) + 1
                    first_error = first_error or f"{name}: {str(exc)[:300]}"
                    i += 1
                    await asyncio.sleep(ERROR_PAUSE_S)
                    continue
                now = time.monotonic()
                i += 1
                if now < t_start:
                    warmup_calls += 1
                    continue
                if now > t_end:
                    break
                if elapsed is not None:
                    latencies.append(elapsed // 1000)
                if not per_message:
                    meter.units += 1
                for tag in found:
                    tags[tag] = tags.get(tag, 0) + 1
            if i >= per_worker:
                hit_max = True

        await asyncio.gather(*(worker(local, g) for local, g in enumerate(workers)))
        return {
            "ok": True,
            "latencies_us": latencies,
            "units": meter.units,
            "per_message": per_message,
            "errors": errors,
            "first_error": first_error,
            "tags": tags,
            "warmup_calls": warmup_calls,
            "hit_max_ops": hit_max,
        }


async def serve(out: TextIO) -> None:
    """Answer commands from stdin until it closes or ``close`` arrives."""
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(EXECUTOR_THREADS, thread_name_prefix="loadgen"))
    reader = asyncio.StreamReader(limit=64 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    state = Loadgen()
    while line := await reader.readline():
        msg = json.loads(line)
        try:
            reply = await state.handle(msg)
        except Exception as exc:  # noqa: BLE001 - the harness reports it
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        out.write(json.dumps(reply) + "\n")
        out.flush()
        if msg["cmd"] == "close":
            break


def main() -> None:
    """Keep stdout for the protocol, send everything else to stderr, and serve (on uvloop when installed)."""
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(out))
    else:
        uvloop.run(serve(out))


if __name__ == "__main__":
    main()
