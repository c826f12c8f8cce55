"""Single-client latency of cached GetHistory and write-through AppendMessages against real server processes."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import pathlib
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from types import TracebackType
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chatmem.v1 import resources_pb2
from chatmem.v1 import thread_memory_service_pb2 as pb
from chatmem.v1 import thread_memory_service_pb2_grpc as pb_grpc
from devtools.ports import free_port
from devtools.postgres import PostgresProcess
from devtools.redis import RedisProcess

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
WORKSPACE = "bench"
CALL_TIMEOUT_S = 10.0
HEALTH_TIMEOUT_S = 30.0
SERVER_STOP_TIMEOUT_S = 15.0
CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)
# Inherited variables with these prefixes would silently change the server under test.
SETTINGS_PREFIXES = ("GRPC__", "REDIS__", "DATABASE__", "MEMORY__", "LIMITS__", "LOG_LEVEL")
WORDS = (
    "the", "user", "asked", "about", "memory", "thread", "window", "cache", "store", "latency", "agent",
    "message", "context", "history", "answer", "because", "request", "server", "token", "model", "prompt",
    "summary", "and", "then", "with", "from", "while", "every", "recent", "durable", "postgres", "redis",
)  # fmt: skip

Sample = tuple[int, tuple[str, ...]]
Operation = Callable[[int], Awaitable[Sample]]


@dataclass(frozen=True)
class BenchConfig:
    """What to preload and how long to measure."""

    threads: int = 20
    messages_per_thread: int = 60
    preload_batch: int = 20
    content_chars: int = 300
    history_limit: int = 50
    window: int = 50
    warmup_calls: int = 200
    warmup_seconds: float = 10.0
    max_calls: int = 3000
    seconds: float = 15.0
    seed: int = 1
    results_dir: str = str(pathlib.Path(__file__).resolve().parent / "results")
    quick: bool = False
    write_mode: str = "write_through"


@dataclass(frozen=True)
class CpuSample:
    """Cumulative CPU seconds (user+sys) of each process at one instant."""

    server: float
    redis: float
    postgres: float
    client: float


@dataclass
class PhaseResult:
    """The measured outcome of one operation."""

    operation: str
    calls: int
    stopped_by: str
    wall_s: float
    ops_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    server_cpu_us_per_op: float
    redis_cpu_us_per_op: float
    postgres_cpu_us_per_op: float
    client_cpu_us_per_op: float
    errors: int = 0
    first_error: str = ""
    anomalies: dict[str, int] = field(default_factory=dict)
    warmup_calls: int = 0
    warmup_anomalies: dict[str, int] = field(default_factory=dict)


# --- processes and CPU -------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    """Fields of /proc/<pid>/stat from field 3 (state) on; the comm field may hold spaces."""
    text = pathlib.Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def process_cpu_seconds(pid: int, *, with_reaped_children: bool = False) -> float:
    """Return a process's CPU time (utime+stime over all its threads) in seconds.

    Args:
        pid: the process id.
        with_reaped_children: also count cutime+cstime, the CPU of children it has waited for.

    Returns:
        The CPU seconds, at the resolution of SC_CLK_TCK.
    """
    f = _stat_fields(pid)
    ticks = int(f[11]) + int(f[12])
    if with_reaped_children:
        ticks += int(f[13]) + int(f[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """Return the CPU seconds of a process, its reaped children and its live direct children.

    PostgreSQL runs one backend process per connection under the postmaster; this counts them all.

    Args:
        pid: the parent process id.

    Returns:
        The summed CPU seconds.
    """
    total = process_cpu_seconds(pid, with_reaped_children=True)
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            f = _stat_fields(int(entry.name))
            if int(f[1]) == pid:
                total += process_cpu_seconds(int(entry.name), with_reaped_children=True)
        except (OSError, ValueError, IndexError):
            continue  # the process went away while we read it
    return total


def sample_cpu(server_pid: int, redis_pid: int, postgres_pid: int) -> CpuSample:
    """Read the cumulative CPU time of the server, Redis, PostgreSQL and this client.

    Args:
        server_pid: the chatmem server process.
        redis_pid: the redis-server process.
        postgres_pid: the postmaster.

    Returns:
        The sample.
    """
    return CpuSample(
        server=process_cpu_seconds(server_pid),
        redis=process_cpu_seconds(redis_pid),
        postgres=tree_cpu_seconds(postgres_pid),
        client=time.process_time(),
    )


def start_server(
    port: int, postgres_url: str, redis_url: str, window: int, workdir: str, write_mode: str = "write_through"
) -> subprocess.Popen[bytes]:
    """Start ``python -m server`` as a child process with PostgreSQL, Redis and the given write mode.

    Args:
        port: the loopback port to listen on.
        postgres_url: DATABASE__URL.
        redis_url: REDIS__URL.
        window: MEMORY__MAX_THREAD_MESSAGES.
        workdir: the server's working directory (so no stray .env is read); its output goes to server.log there.

    Returns:
        The process.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(SETTINGS_PREFIXES)}
    env.update(
        {
            "GRPC__ADDRESS": f"127.0.0.1:{port}",
            "GRPC__WORKERS": "1",  # one process: its CPU is the figure (GRPC__WORKERS=auto would start one per core)
            "DATABASE__URL": postgres_url,
            "REDIS__URL": redis_url,
            "MEMORY__MAX_THREAD_MESSAGES": str(window),
            "MEMORY__WRITE_MODE": write_mode,
            "LOG_LEVEL": "WARNING",
        }
    )
    with open(os.path.join(workdir, "server.log"), "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "server"], cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT
        )


def stop_server(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM the server and wait for it (SIGKILL after SERVER_STOP_TIMEOUT_S).

    Args:
        proc: the server process; stopping it twice is harmless.

    Returns:
        Its exit code (negative: the signal that ended it).
    """
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(SERVER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)


def problem_lines(path: pathlib.Path, needles: Sequence[str] = ()) -> list[str]:
    """Return the lines of a log file, or only those holding one of ``needles``.

    Args:
        path: the log file (a missing file has no lines).
        needles: substrings to keep; empty keeps every line.

    Returns:
        The lines, without line ends.
    """
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [line for line in lines if not needles or any(n in line for n in needles)]


# --- statistics --------------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Return the q-th percentile (0..100) by linear interpolation between closest ranks.

    Args:
        sorted_values: the values, ascending.
        q: the percentile.

    Returns:
        The percentile, or NaN for no values.
    """
    if not sorted_values:
        return float("nan")
    pos = (len(sorted_values) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low)


def _count(tags: dict[str, int], new: Sequence[str]) -> None:
    for tag in new:
        tags[tag] = tags.get(tag, 0) + 1


# --- the workload ------------------------------------------------------------------------------------


def make_contents(rng: random.Random, n: int, chars: int) -> list[str]:
    """Return ``n`` pseudo-random English-like texts of exactly ``chars`` characters.

    Args:
        rng: the random source.
        n: how many texts.
        chars: the length of each.

    Returns:
        The texts.
    """
    out = []
    for _ in range(n):
        words: list[str] = []
        length = 0
        while length < chars:
            words.append(rng.choice(WORDS))
            length += len(words[-1]) + 1
        out.append(" ".join(words)[:chars])
    return out


async def wait_serving(channel: grpc.aio.Channel, proc: subprocess.Popen[bytes], timeout_s: float) -> float:
    """Poll grpc.health.v1 Check("") until SERVING.

    Args:
        channel: the benchmark's channel.
        proc: the server process (its exit ends the wait).
        timeout_s: the longest wait.

    Returns:
        The seconds it took.

    Raises:
        RuntimeError: the server exited first.
        TimeoutError: it was not SERVING in time.
    """
    stub = health_pb2_grpc.HealthStub(channel)
    start = time.monotonic()
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before it was SERVING")
        try:
            response = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
            if response.status == health_pb2.HealthCheckResponse.SERVING:
                return time.monotonic() - start
        except grpc.aio.AioRpcError:
            pass
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"the server was not SERVING after {timeout_s}s")
        await asyncio.sleep(0.1)


async def preload(
    stub: pb_grpc.ThreadMemoryServiceStub, config: BenchConfig, thread_ids: Sequence[str], contents: Sequence[str]
) -> dict[str, Any]:
    """Fill each thread with ``messages_per_thread`` alternating user/assistant messages, in batches.

    Args:
        stub: the ThreadMemoryService stub.
        config: the benchmark configuration.
        thread_ids: the threads to fill.
        contents: message texts to cycle through.

    Returns:
        What was done: calls, messages, seconds.

    Raises:
        RuntimeError: a thread did not end with the expected message count.
    """
    start = time.perf_counter()
    calls = 0
    for t, thread_id in enumerate(thread_ids):
        count = 0
        for first in range(0, config.messages_per_thread, config.preload_batch):
            n = min(config.preload_batch, config.messages_per_thread - first)
            messages = [
                resources_pb2.MessageInput(
                    role=resources_pb2.ROLE_USER if (first + i) % 2 == 0 else resources_pb2.ROLE_ASSISTANT,
                    content=contents[(t * config.messages_per_thread + first + i) % len(contents)],
                )
                for i in range(n)
            ]
            response = await stub.AppendMessages(
                pb.AppendMessagesRequest(
                    workspace_id=WORKSPACE,
                    thread_id=thread_id,
                    messages=messages,
                    request_id=f"preload-{t}-{first}",
                ),
                timeout=CALL_TIMEOUT_S,
            )
            calls += 1
            count = response.message_count
        if count != config.messages_per_thread:
            raise RuntimeError(f"{thread_id} holds {count} messages after preload, not {config.messages_per_thread}")
    return {
        "calls": calls,
        "messages": len(thread_ids) * config.messages_per_thread,
        "seconds": round(time.perf_counter() - start, 3),
    }


def history_operation(stub: pb_grpc.ThreadMemoryServiceStub, thread_ids: Sequence[str], limit: int) -> Operation:
    """Build the GetHistory call: round-robin over the threads, expecting a full window from the cache.

    Args:
        stub: the ThreadMemoryService stub.
        thread_ids: the preloaded threads.
        limit: GetHistoryRequest.limit.

    Returns:
        A function of the call index that makes one call and returns (nanoseconds, anomaly tags).
    """
    requests = [pb.GetHistoryRequest(workspace_id=WORKSPACE, thread_id=t, limit=limit) for t in thread_ids]

    async def call(i: int) -> Sample:
        request = requests[i % len(requests)]
        start = time.perf_counter_ns()
        response = await stub.GetHistory(request, timeout=CALL_TIMEOUT_S)
        elapsed = time.perf_counter_ns() - start
        tags = []
        if response.serving.tier != resources_pb2.TIER_CACHE:
            tags.append(f"tier={resources_pb2.Tier.Name(response.serving.tier)}")
        if response.serving.degraded:
            tags.append("degraded")
        if len(response.messages) != limit:
            tags.append(f"messages={len(response.messages)}")
        return elapsed, tuple(tags)

    return call


def append_operation(
    stub: pb_grpc.ThreadMemoryServiceStub,
    thread_ids: Sequence[str],
    contents: Sequence[str],
    durability: int = resources_pb2.DURABILITY_PERSISTED,
) -> Operation:
    """Build the AppendMessages call: one user + assistant exchange, round-robin over the threads.

    Args:
        stub: the ThreadMemoryService stub.
        thread_ids: the preloaded threads.
        contents: message texts to cycle through.
        durability: the durability every reply must report.

    Returns:
        A function of the call index that makes one call and returns (nanoseconds, anomaly tags).
    """

    async def call(i: int) -> Sample:
        request = pb.AppendMessagesRequest(
            workspace_id=WORKSPACE,
            thread_id=thread_ids[i % len(thread_ids)],
            messages=[
                resources_pb2.MessageInput(role=resources_pb2.ROLE_USER, content=contents[(2 * i) % len(contents)]),
                resources_pb2.MessageInput(
                    role=resources_pb2.ROLE_ASSISTANT, content=contents[(2 * i + 1) % len(contents)]
                ),
            ],
            request_id=f"append-{i}",
        )
        start = time.perf_counter_ns()
        response = await stub.AppendMessages(request, timeout=CALL_TIMEOUT_S)
        elapsed = time.perf_counter_ns() - start
        tags = []
        if response.durability != durability:
            tags.append(f"durability={resources_pb2.Durability.Name(response.durability)}")
        if response.serving.degraded:
            tags.append("degraded")
        if response.replayed:
            tags.append("replayed")
        if len(response.seqs) != 2:
            tags.append(f"seqs={len(response.seqs)}")
        return elapsed, tuple(tags)

    return call


async def run_phase(name: str, operation: Operation, config: BenchConfig, pids: tuple[int, int, int]) -> PhaseResult:
    """Warm up, then call ``operation`` sequentially until max_calls or the time budget, whichever comes first.

    Args:
        name: the operation's name in the report.
        operation: one call, given its index.
        config: the budgets.
        pids: the server, redis-server and postmaster process ids, for CPU accounting.

    Returns:
        The latency distribution, throughput and CPU cost per call of the measured calls.
    """
    index = 0
    warmup_tags: dict[str, int] = {}
    warmup_end = time.perf_counter() + config.warmup_seconds
    warmed = 0
    while warmed < config.warmup_calls and time.perf_counter() < warmup_end:
        _, tags = await operation(index)
        _count(warmup_tags, tags)
        index += 1
        warmed += 1

    latencies: list[int] = []
    tags_seen: dict[str, int] = {}
    errors = 0
    first_error = ""
    before = sample_cpu(*pids)
    start = time.perf_counter()
    deadline = start + config.seconds
    while len(latencies) + errors < config.max_calls and time.perf_counter() < deadline:
        try:
            elapsed, tags = await operation(index)
        except grpc.aio.AioRpcError as exc:
            errors += 1
            first_error = first_error or f"{exc.code().name}: {exc.details()}"
        else:
            latencies.append(elapsed)
            _count(tags_seen, tags)
        index += 1
    wall = time.perf_counter() - start
    after = sample_cpu(*pids)

    calls = len(latencies) + errors
    ms = sorted(v / 1e6 for v in latencies)

    def per_op_us(a: float, b: float) -> float:
        return round((b - a) * 1e6 / calls, 1) if calls else float("nan")

    return PhaseResult(
        operation=name,
        calls=calls,
        stopped_by="max_calls" if calls >= config.max_calls else "time",
        wall_s=round(wall, 3),
        ops_per_s=round(calls / wall, 1) if wall > 0 else float("nan"),
        p50_ms=round(percentile(ms, 50), 3),
        p90_ms=round(percentile(ms, 90), 3),
        p99_ms=round(percentile(ms, 99), 3),
        p999_ms=round(percentile(ms, 99.9), 3),
        mean_ms=round(sum(ms) / len(ms), 3) if ms else float("nan"),
        min_ms=round(ms[0], 3) if ms else float("nan"),
        max_ms=round(ms[-1], 3) if ms else float("nan"),
        server_cpu_us_per_op=per_op_us(before.server, after.server),
        redis_cpu_us_per_op=per_op_us(before.redis, after.redis),
        postgres_cpu_us_per_op=per_op_us(before.postgres, after.postgres),
        client_cpu_us_per_op=per_op_us(before.client, after.client),
        errors=errors,
        first_error=first_error,
        anomalies=tags_seen,
        warmup_calls=warmed,
        warmup_anomalies=warmup_tags,
    )


async def measure(
    config: BenchConfig, port: int, server: subprocess.Popen[bytes], redis_pid: int, postgres_pid: int
) -> dict[str, Any]:
    """Wait for the server, preload, prime the cache, and measure both operations over one channel.

    Args:
        config: the benchmark configuration.
        port: the server's loopback port.
        server: the server process.
        redis_pid: the redis-server process id.
        postgres_pid: the postmaster process id.

    Returns:
        The setup facts and the phase results.
    """
    rng = random.Random(config.seed)
    contents = make_contents(rng, 256, config.content_chars)
    thread_ids = [f"thread-{i:04d}" for i in range(config.threads)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS) as channel:
        ready_s = await wait_serving(channel, server, HEALTH_TIMEOUT_S)
        stub = pb_grpc.ThreadMemoryServiceStub(channel)
        loaded = await preload(stub, config, thread_ids, contents)
        # One read per thread before the warm-up: shows whether write-through left a readable window.
        priming: dict[str, int] = {}
        history = history_operation(stub, thread_ids, config.history_limit)
        for i in range(len(thread_ids)):
            _, tags = await history(i)
            _count(priming, tags or ("ok: cache hit, full window",))
        pids = (server.pid, redis_pid, postgres_pid)
        expected = (
            resources_pb2.DURABILITY_QUEUED
            if config.write_mode == "write_behind"
            else resources_pb2.DURABILITY_PERSISTED
        )
        append = append_operation(stub, thread_ids, contents, expected)
        phases = [
            await run_phase(f"GetHistory limit={config.history_limit} (cache hit)", history, config, pids),
            await run_phase(f"AppendMessages 1 exchange ({config.write_mode})", append, config, pids),
        ]
    return {
        "client_event_loop": type(asyncio.get_running_loop()).__name__,
        "server_ready_s": round(ready_s, 3),
        "preload": loaded,
        "first_read_after_preload": priming,
        "phases": phases,
    }


# --- reporting ---------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """Describe the machine and the software under test.

    Returns:
        nproc, CPU model, platform, Python and library versions, and the git commit.
    """

    def run(args: list[str]) -> str:
        try:
            done = subprocess.run(args, capture_output=True, text=True, timeout=10, cwd=REPO_ROOT)
        except (OSError, subprocess.SubprocessError):
            return ""
        return done.stdout.strip()

    model = ""
    with contextlib.suppress(OSError):
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    postgres = shutil.which("postgres") or next(
        iter(sorted(pathlib.Path("/usr/lib/postgresql").glob("*/bin/postgres"))), None
    )
    return {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "grpcio": grpc.__version__,
        "redis_server": run(["redis-server", "--version"]),
        "postgres": run([str(postgres), "--version"]) if postgres else "",
        "clk_tck": os.sysconf("SC_CLK_TCK"),
        "git_commit": run(["git", "rev-parse", "HEAD"]),
        "git_dirty": bool(run(["git", "status", "--porcelain", "--untracked-files=no"])),
    }


def format_table(phases: Sequence[PhaseResult]) -> str:
    """Render the results as a fixed-width table.

    Args:
        phases: the measured operations.

    Returns:
        The table text.
    """
    header = ["operation", "calls", "p50 ms", "p90 ms", "p99 ms", "ops/s"]
    header += ["server CPU us/op", "redis CPU us/op", "pg CPU us/op", "client CPU us/op"]
    rows = [
        [p.operation, str(p.calls), f"{p.p50_ms:.3f}", f"{p.p90_ms:.3f}", f"{p.p99_ms:.3f}", f"{p.ops_per_s:.1f}"]
        + [f"{v:.0f}" for v in (p.server_cpu_us_per_op, p.redis_cpu_us_per_op, p.postgres_cpu_us_per_op)]
        + [f"{p.client_cpu_us_per_op:.0f}"]
        for p in phases
    ]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def parse_args(argv: Sequence[str] | None) -> BenchConfig:
    """Build the configuration from the command line.

    Args:
        argv: the arguments (None: sys.argv[1:]).

    Returns:
        The configuration.
    """
    parser = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="3 threads, 20 warm-up calls, 50 calls or 2 s per phase")
    parser.add_argument("--seconds", type=float, help="time budget per measured phase (default 15; quick 2)")
    parser.add_argument("--max-calls", type=int, help="call budget per measured phase (default 3000; quick 50)")
    parser.add_argument("--warmup-calls", type=int, help="warm-up calls per phase (default 200; quick 20)")
    parser.add_argument("--threads", type=int, help="threads to preload (default 20; quick 3)")
    parser.add_argument("--results-dir", help="where the JSON goes (default bench/results)")
    parser.add_argument("--write-mode", choices=["write_through", "write_behind"], help="default write_through")
    args = parser.parse_args(argv)
    quick = BenchConfig(threads=3, warmup_calls=20, warmup_seconds=2.0, max_calls=50, seconds=2.0, quick=True)
    base = quick if args.quick else BenchConfig()
    overrides: dict[str, Any] = {
        "seconds": args.seconds,
        "max_calls": args.max_calls,
        "warmup_calls": args.warmup_calls,
        "threads": args.threads,
        "results_dir": args.results_dir,
        "write_mode": args.write_mode,
    }
    config = BenchConfig(**{**asdict(base), **{k: v for k, v in overrides.items() if v is not None}})
    if config.seconds <= 0 or config.max_calls < 1 or config.warmup_calls < 0 or config.threads < 1:
        parser.error("--seconds and --max-calls must be positive, --warmup-calls >= 0, --threads >= 1")
    return config


def run(config: BenchConfig, argv: Sequence[str] = ()) -> tuple[dict[str, Any], pathlib.Path]:
    """Start Redis, PostgreSQL and the server, measure, stop everything, and write the JSON report.

    Args:
        config: the benchmark configuration.
        argv: the command line arguments, recorded in the report.

    Returns:
        The report and the path of its JSON file.
    """
    started = dt.datetime.now(dt.UTC)
    with contextlib.ExitStack() as stack:
        redis = RedisProcess()
        stack.callback(redis.close)
        redis.start()
        postgres = PostgresProcess()
        stack.callback(postgres.close)
        postgres.start()
        workdir = tempfile.mkdtemp(prefix="chatmem-bench-")
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        server_log = pathlib.Path(workdir, "server.log")
        postgres_log = pathlib.Path(postgres.dir, "postgres.log")
        port = free_port()
        server = start_server(port, postgres.url, redis.url, config.window, workdir, config.write_mode)

        def show_logs_on_error(
            exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
        ) -> None:
            if exc_type is not None:
                print("benchmark failed; server output:", *problem_lines(server_log)[-50:], sep="\n  ", file=sys.stderr)

        stack.push(show_logs_on_error)
        stack.callback(stop_server, server)
        if redis.proc is None or postgres.proc is None:
            raise RuntimeError("redis-server or PostgreSQL did not start")
        measured = asyncio.run(measure(config, port, server, redis.proc.pid, postgres.proc.pid))
        exit_code = stop_server(server)
        server_lines = problem_lines(server_log)
        pg_problems = problem_lines(postgres_log, ("ERROR", "FATAL", "PANIC", "WARNING"))

    report: dict[str, Any] = {
        "benchmark": "latency",
        "date_utc": started.isoformat(timespec="seconds"),
        "command": [sys.executable, "-m", "bench.latency", *argv],
        "config": asdict(config),
        "machine": machine_info(),
        "setup": {
            "topology": "one client, one grpc.aio channel, server/redis/postgres as separate processes on 127.0.0.1",
            "write_mode": config.write_mode,
            "postgres_settings": "fsync=off, full_page_writes=off (devtools/postgres.py)",
            "redis_settings": "appendonly no, save ''",
            **{k: v for k, v in measured.items() if k != "phases"},
        },
        "phases": [asdict(p) for p in measured["phases"]],
        "server": {"exit_code": exit_code, "output_line_count": len(server_lines), "output": server_lines[:100]},
        "postgres_log_problems": pg_problems[:100],
    }
    out_dir = pathlib.Path(config.results_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"latency-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    return report, path


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the table and any problems.

    Args:
        argv: the command line arguments (None: sys.argv[1:]).

    Returns:
        0, or 1 when a measured call failed or was anomalous or the server did not exit cleanly.
    """
    args = sys.argv[1:] if argv is None else list(argv)
    report, path = run(parse_args(args), args)
    phases = [PhaseResult(**p) for p in report["phases"]]
    m = report["machine"]
    print(f"chatmem latency, {report['date_utc']}, nproc={m['nproc']}, python {m['python']}, grpcio {m['grpcio']}")
    setup = report["setup"]
    print(f"preload: {setup['preload']}; first read of each thread after preload: {setup['first_read_after_preload']}")
    print(format_table(phases))
    problems = []
    for p in phases:
        tick_us = 1e6 / m["clk_tck"] / max(p.calls, 1)
        detail = f"p99.9 {p.p999_ms} ms, max {p.max_ms} ms, CPU resolution ±{tick_us:.0f} us/op per process"
        warm = f"warm-up {p.warmup_calls} calls" + (f" {p.warmup_anomalies}" if p.warmup_anomalies else "")
        print(f"  {p.operation}: stopped by {p.stopped_by} after {p.wall_s}s; {detail}; {warm}")
        if p.anomalies:
            problems.append(f"{p.operation}: anomalous responses {p.anomalies}")
        if p.errors:
            problems.append(f"{p.operation}: {p.errors} failed calls, first: {p.first_error}")
    server = report["server"]
    if server["exit_code"] != 0:
        problems.append(f"the server exited with {server['exit_code']} after SIGTERM")
    if server["output"]:
        problems.append("server output:\n    " + "\n    ".join(server["output"][:30]))
    if report["postgres_log_problems"]:
        problems.append("postgres log:\n    " + "\n    ".join(report["postgres_log_problems"][:30]))
    print("problems:" if problems else "problems: none", *problems, sep="\n  ")
    print(f"results: {path}")
    return 1 if any(p.anomalies or p.errors for p in phases) or server["exit_code"] != 0 else 0


if __name__ == "__main__":
    sys.exit(main())
