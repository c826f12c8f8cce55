"""GetHistory(50) of v2 messages (parts, tool calls, envelope) against v1 text messages of the same size.

Both thread sets live on one write_behind server (PostgreSQL with fsync on, Redis); phases alternate
v1, v2, v1, v2 so that drift in the machine's load hits both alike. The verdict compares the medians of
the server's CPU per call and of the p50 latency: v2 must cost no more than 1.2x v1, since the cache
serves the stored bytes of either without parsing them.

    .venv/bin/python -m bench.message_v2 [--seconds 8] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import pathlib
import shutil
import statistics
import sys
import tempfile
from collections.abc import Sequence

import grpc

from bench.latency import (
    CALL_TIMEOUT_S,
    CHANNEL_OPTIONS,
    HEALTH_TIMEOUT_S,
    WORKSPACE,
    BenchConfig,
    PhaseResult,
    history_operation,
    run_phase,
    start_server,
    stop_server,
    wait_serving,
)
from chatmem.v1 import resources_pb2 as r
from chatmem.v1 import thread_memory_service_pb2 as pb
from chatmem.v1 import thread_memory_service_pb2_grpc as pb_grpc
from devtools.ports import free_port
from devtools.postgres import PostgresProcess
from devtools.redis import RedisProcess

TARGET_RATIO = 1.2
THREADS = 20
MESSAGES = 60
WINDOW = 50
FILLER = "the agent asked the tool about the weather and then summarised the answer for the user "


def v2_message(i: int) -> r.MessageInput:
    """A realistic v2 message: a tool round's call, its result, or an answer with reasoning and an envelope."""
    kind = i % 3
    if kind == 0:
        parts = [
            r.Part(text=FILLER[:60]),
            r.Part(tool_call=r.ToolCall(id=f"call_{i}", name="get_weather", arguments='{"city":"Paris","unit":"C"}')),
        ]
        role = r.ROLE_ASSISTANT
    elif kind == 1:
        parts = [r.Part(tool_result=r.ToolResult(tool_call_id=f"call_{i - 1}", parts=[r.Part(text=FILLER[:80])]))]
        role = r.ROLE_TOOL
    else:
        parts = [
            r.Part(reasoning=r.Reasoning(text="short thought", signature=b"\x01" * 32)),
            r.Part(text=FILLER[:50]),
        ]
        role = r.ROLE_ASSISTANT
    return r.MessageInput(
        role=role,  # type: ignore[arg-type]
        parts=parts,
        envelope=r.Envelope(format="openai.chat", raw=b'{"role":"assistant","content":null}'),
        message_id=f"m{i}",
        token_count=40,
    )


def v1_like(v2: r.MessageInput) -> r.MessageInput:
    """A v1 text message whose serialised size equals the v2 message's."""
    size = len(v2.SerializeToString())
    probe = r.MessageInput(role=r.ROLE_USER, content="")
    text = (FILLER * (size // len(FILLER) + 2))[: max(0, size - len(probe.SerializeToString()) - 3)]
    out = r.MessageInput(role=r.ROLE_USER, content=text)
    while len(out.SerializeToString()) < size:
        out.content += "x"
    return out


async def preload(stub: pb_grpc.ThreadMemoryServiceStub, prefix: str, messages: Sequence[r.MessageInput]) -> None:
    """Fill THREADS threads named prefix-N with the messages, 20 per append."""
    for t in range(THREADS):
        for first in range(0, len(messages), 20):
            await stub.AppendMessages(
                pb.AppendMessagesRequest(
                    workspace_id=WORKSPACE,
                    thread_id=f"{prefix}-{t}",
                    messages=messages[first : first + 20],
                    request_id=f"{prefix}-{t}-{first}",
                ),
                timeout=CALL_TIMEOUT_S,
            )


async def measure(config: BenchConfig, rounds: int, port: int, pids: tuple[int, int, int], server: object) -> dict:
    """Preload both sets, then alternate v1 and v2 GetHistory(50) phases."""
    v2 = [v2_message(i) for i in range(MESSAGES)]
    v1 = [v1_like(m) for m in v2]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS) as channel:
        await wait_serving(channel, server, HEALTH_TIMEOUT_S)  # type: ignore[arg-type]
        stub = pb_grpc.ThreadMemoryServiceStub(channel)
        await preload(stub, "v1", v1)
        await preload(stub, "v2", v2)
        phases: dict[str, list[PhaseResult]] = {"v1": [], "v2": []}
        for _ in range(rounds):
            for name in ("v1", "v2"):
                threads = [f"{name}-{t}" for t in range(THREADS)]
                phases[name].append(await run_phase(name, history_operation(stub, threads, WINDOW), config, pids))
    sizes = {
        "v1": statistics.mean(len(m.SerializeToString()) for m in v1),
        "v2": statistics.mean(len(m.SerializeToString()) for m in v2),
    }
    return {"phases": phases, "sizes": sizes}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison; print the figures, the load average and PASS/FAIL."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-calls", type=int, default=20_000)
    args = parser.parse_args(argv)
    config = BenchConfig(seconds=args.seconds, max_calls=args.max_calls, warmup_calls=200, warmup_seconds=3.0)
    with contextlib.ExitStack() as stack:
        redis = RedisProcess()
        stack.callback(redis.close)
        redis.start()
        postgres = PostgresProcess({"fsync": "on", "full_page_writes": "on"})
        stack.callback(postgres.close)
        postgres.start()
        workdir = tempfile.mkdtemp(prefix="chatmem-bench-v2-")
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        port = free_port()
        server = start_server(port, postgres.url, redis.url, WINDOW, workdir, "write_behind")
        stack.callback(stop_server, server)
        assert redis.proc is not None
        assert postgres.proc is not None
        load_before = os.getloadavg()
        result = asyncio.run(
            measure(config, args.rounds, port, (server.pid, redis.proc.pid, postgres.proc.pid), server)
        )
        load_after = os.getloadavg()
    phases: dict[str, list[PhaseResult]] = result["phases"]
    print(
        f"GetHistory({WINDOW}) from the cache, one client; mean message size v1 {result['sizes']['v1']:.0f} B, "
        f"v2 {result['sizes']['v2']:.0f} B"
    )
    print(f"{'set':<4} {'calls':>7} {'ops/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'server CPU us/op':>17} anomalies")
    for name, runs in phases.items():
        for p in runs:
            print(
                f"{name:<4} {p.calls:>7} {p.ops_per_s:>8.0f} {p.p50_ms:>8.3f} {p.p99_ms:>8.3f} "
                f"{p.server_cpu_us_per_op:>17.1f} {p.anomalies or ''}{' errors=' + str(p.errors) if p.errors else ''}"
            )
    ok = all(not p.errors and not p.anomalies for runs in phases.values() for p in runs)
    verdicts = []
    for metric in ("server_cpu_us_per_op", "p50_ms"):
        a = statistics.median(getattr(p, metric) for p in phases["v1"])
        b = statistics.median(getattr(p, metric) for p in phases["v2"])
        ratio = b / a if a else float("inf")
        passed = ratio <= TARGET_RATIO
        verdicts.append(passed)
        print(
            f"{'PASS' if passed else 'FAIL'}  v2/v1 {metric} = {ratio:.2f}x "
            f"(target <= {TARGET_RATIO}x; {b:.3f} vs {a:.3f})"
        )
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min); {os.cpu_count()} cores")
    out = pathlib.Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "message_v2-latest.json").write_text(
        json.dumps(
            {
                "phases": {k: [dataclasses.asdict(p) for p in v] for k, v in phases.items()},
                "sizes": result["sizes"],
                "load_before": load_before,
                "load_after": load_after,
            },
            indent=2,
        )
        + "\n"
    )
    if not ok:
        print("some calls failed or were anomalous", file=sys.stderr)
    return 0 if ok and all(verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
