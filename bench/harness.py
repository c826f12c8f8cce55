"""chatmem against the floors (limit-grpc, limit-redis, limit-postgres) and the LangChain peers, in one run.

``python -m bench`` starts one Redis and one PostgreSQL shared by every target, the two chatmem servers
(write_behind, write_through) and the bare limit-grpc server as processes of their own, and one or more load
generator processes (``bench.loadgen``), apart from every server. Each operation runs at each concurrency
for a fixed time (and a bounded number of calls), target after target. Server, Redis, PostgreSQL and load
generator CPU come from /proc/<pid>/stat of each process tree, sampled at the start and end of the measured
window. It prints a table, the ratios of chatmem to the limits and the peers, and the performance targets
as PASS/FAIL, and writes the whole report as JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib.util
import json
import math
import os
import pathlib
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import IO, Any

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent

from bench.latency import machine_info, percentile
from bench.redis_modules import ModuleRedisProcess, find_module_redis, server_version
from bench.workload import (
    ALL_TARGETS,
    APPEND,
    CHATMEM,
    CHATMEM_WB,
    CHATMEM_WT,
    HYDRATE,
    LANGCHAIN_POSTGRES,
    LANGCHAIN_REDIS,
    LIMIT_GRPC,
    LIMIT_POSTGRES,
    LIMIT_REDIS,
    LIMITS,
    PEERS,
    READ,
    RPC,
    STREAM,
    Workload,
    chat_op,
    is_chat,
    supported_ops,
)
from devtools.ports import free_port
from devtools.postgres import PostgresProcess
from devtools.redis import RedisProcess
from devtools.server import ServerProcess

RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"
DATABASES = {
    CHATMEM_WB: "chatmem_wb",
    CHATMEM_WT: "chatmem_wt",
    LIMIT_POSTGRES: "limit_pg",
    LANGCHAIN_POSTGRES: "lc_pg",
}
REDIS_PREFIXES = {CHATMEM_WB: "cmwb", CHATMEM_WT: "cmwt", LIMIT_REDIS: "lr:", LANGCHAIN_REDIS: "lcr:"}
PEER_PACKAGES = {
    LANGCHAIN_POSTGRES: ("langchain_postgres", "psycopg", "langchain_core"),
    LANGCHAIN_REDIS: ("langchain_redis", "redisvl", "langchain_core"),
}
OPEN_TIMEOUT_S = 120.0
PRELOAD_TIMEOUT_S = 900.0
DRAIN_TIMEOUT_S = 180.0
PHASE_GRACE_S = 120.0
NOISY_CORES = 0.3
NOISE_PAUSE_S = 2.0
BACKGROUND_SAMPLE_S = 3.0
NOISE_RETRY_BUDGET = 15


@dataclass(frozen=True)
class Config:
    """What to load and how long to measure."""

    seconds: float = 5.0
    warmup_s: float = 1.0
    concurrency: tuple[int, ...] = (1, 32)
    targets: tuple[str, ...] = ALL_TARGETS
    ops: tuple[str, ...] = ()
    threads: int = 200
    messages: int = 60
    chat_lengths: tuple[int, ...] = (60, 1000)
    long_threads: int = 64
    hydrate_messages: int = 100_000
    stream_messages: int = 200_000
    window: int = 50
    content_chars: int = 300
    stream_chunk: int = 500
    max_ops: int = 1_000_000
    loadgen_procs: int = 2
    server_workers: int = 1
    channels: int = 0
    noise_retries: int = 1
    seed: int = 1
    quick: bool = False
    results_dir: str = str(RESULTS_DIR)

    def workload(self) -> Workload:
        """The thread sets and texts of this run."""
        return Workload.build(
            threads=self.threads,
            messages=self.messages,
            chat_lengths=self.chat_lengths,
            long_threads=self.long_threads,
            hydrate_threads=max(self.concurrency),
            hydrate_messages=self.hydrate_messages,
            stream_messages=self.stream_messages,
            window=self.window,
            content_chars=self.content_chars,
            stream_chunk=self.stream_chunk,
            seed=self.seed,
        )


QUICK = Config(
    seconds=0.3,
    warmup_s=0.2,
    concurrency=(1, 2),
    threads=4,
    chat_lengths=(60, 200),
    long_threads=2,
    hydrate_messages=2_000,
    stream_messages=5_000,
    noise_retries=0,
    quick=True,
)


@dataclass
class Row:
    """The measured outcome of one (operation, concurrency, target) phase."""

    op: str
    concurrency: int
    target: str
    unit: str
    calls: int
    units: int
    wall_s: float
    ops_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    server_cpu_us_per_op: float | None
    redis_cpu_us_per_op: float
    postgres_cpu_us_per_op: float
    loadgen_cpu_us_per_op: float
    other_servers_cpu_us_per_op: float
    server_side_cores: float
    loadgen_cores: float
    unattributed_cores: float
    errors: dict[str, int] = field(default_factory=dict)
    first_error: str = ""
    anomalies: dict[str, int] = field(default_factory=dict)
    warmup_calls: int = 0
    hit_max_ops: bool = False
    drain_after_s: float | None = None
    attempts: int = 1


# --- processes and CPU -------------------------------------------------------------------------------


def proc_snapshot() -> dict[int, tuple[int, int, int]]:
    """Read every process's parent, own CPU ticks (utime+stime) and its reaped children's (cutime+cstime)."""
    out: dict[int, tuple[int, int, int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                text = f.read().decode(errors="replace")
        except OSError:
            continue  # it exited while we looked
        fields = text[text.rindex(")") + 2 :].split()
        out[int(name)] = (int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14]))
    return out


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all cores, every state but idle and iowait)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def tree_seconds(root: int | None, snap: dict[int, tuple[int, int, int]]) -> float:
    """CPU seconds of a process and all its descendants, including children they have reaped."""
    if root is None or root not in snap:
        return 0.0
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in snap.items():
        children.setdefault(ppid, []).append(pid)
    ticks, todo = 0, [root]
    while todo:
        pid = todo.pop()
        ticks += snap[pid][1] + snap[pid][2]
        todo += children.get(pid, [])
    return ticks / os.sysconf("SC_CLK_TCK")


class Loadgen:
    """A ``python -m bench.loadgen`` child: one JSON command a line in, one JSON reply a line out."""

    def __init__(self, index: int, workdir: str) -> None:
        self.index = index
        self.log_path = os.path.join(workdir, f"loadgen-{index}.log")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bench.loadgen"],
                cwd=REPO_ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
            )
        self.buffer = b""
        self.pending = 0

    def send(self, msg: dict[str, Any]) -> None:
        """Write one command."""
        stdin: IO[bytes] | None = self.proc.stdin
        assert stdin is not None
        stdin.write((json.dumps(msg) + "\n").encode())
        stdin.flush()
        self.pending += 1

    def receive(self, timeout_s: float) -> dict[str, Any]:
        """Read one reply, raising with the process's log tail if it fails, exits or takes too long."""
        stdout: IO[bytes] | None = self.proc.stdout
        assert stdout is not None
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"load generator {self.index} did not answer in {timeout_s:.0f}s")
            ready, _, _ = select.select([stdout], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(stdout.fileno(), 1 << 20)
                if not chunk:
                    raise RuntimeError(f"load generator {self.index} exited:\n{self.log_tail()}")
                self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        self.pending -= 1
        reply: dict[str, Any] = json.loads(line)
        if not reply.get("ok"):
            raise RuntimeError(f"load generator {self.index}: {reply.get('error')}\n{reply.get('traceback', '')}")
        return reply

    def request(self, msg: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """Send a command and wait for its reply."""
        self.send(msg)
        return self.receive(timeout_s)

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the process's stderr."""
        try:
            return pathlib.Path(self.log_path).read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Ask it to close its connections (or, if it is busy with a command, terminate it); make sure it is gone."""
        if self.proc.poll() is None and self.pending:
            self.proc.terminate()
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, RuntimeError, TimeoutError, ValueError):
                self.request({"cmd": "close"}, 30)
            with contextlib.suppress(OSError):
                if self.proc.stdin:
                    self.proc.stdin.close()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class LimitGrpcProcess:
    """``python -m bench.limit_grpc`` on a free loopback port."""

    def __init__(self, workdir: str, window: int, chars: int) -> None:
        self.port = free_port()
        self.log_path = os.path.join(workdir, "limit-grpc.log")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bench.limit_grpc", "--port", str(self.port), "--messages", str(window),
                 "--chars", str(chars)],
                cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    @property
    def target(self) -> str:
        """The address clients dial."""
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        """SIGTERM and wait."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def create_databases(url: str, names: Sequence[str]) -> None:
    """CREATE DATABASE each name on the server of ``url``."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        for name in names:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def vacuum(urls: Sequence[str]) -> None:
    """VACUUM ANALYZE every database after the preload, so no target pays for hint bits or statistics."""
    import asyncpg

    for url in urls:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("VACUUM ANALYZE")
        finally:
            await conn.close()


def db_url(server_url: str, name: str) -> str:
    """The URL of database ``name`` on the server of ``server_url`` (a ``.../postgres`` URL)."""
    return server_url.rsplit("/", 1)[0] + "/" + name


def outbox_depth(redis_url: str, prefix: str) -> int:
    """Entries in all outbox streams of a chatmem key prefix."""
    import redis

    from server.storage.keys import BUCKETS, KeySpace

    keys = KeySpace(prefix)
    client = redis.Redis.from_url(redis_url)
    try:
        pipe = client.pipeline(transaction=False)
        for b in range(BUCKETS):
            pipe.xlen(keys.outbox(b))
        return sum(int(n) for n in pipe.execute())
    finally:
        client.close()


def wait_drained(redis_url: str, prefix: str, timeout_s: float) -> float:
    """Wait until chatmem's outbox is empty (its flusher has written everything); return the seconds."""
    started = time.monotonic()
    while outbox_depth(redis_url, prefix):
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"the {prefix} outbox still holds entries after {timeout_s}s")
        time.sleep(0.05)
    return time.monotonic() - started


def peer_status(target: str) -> str:
    """'' if a peer's packages are installed, else why not (with the fix)."""
    missing = [p for p in PEER_PACKAGES.get(target, ()) if importlib.util.find_spec(p) is None]
    if missing:
        return f"unavailable: not installed: {', '.join(missing)} (pip install -r bench/requirements.txt)"
    return ""


def git_state() -> str:
    """Short commit hash, plus ' dirty' when ``git status --porcelain`` shows anything."""

    def run(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, cwd=REPO_ROOT).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = run("rev-parse", "--short", "HEAD").strip() or "unknown"
    return commit + (" dirty" if run("status", "--porcelain").strip() else "")


# --- the run ------------------------------------------------------------------------------------------


class Harness:
    """Owns the processes of one run and measures the phases."""

    def __init__(self, config: Config, stack: contextlib.ExitStack) -> None:
        self.config = config
        self.stack = stack
        self.workload = config.workload()
        self.status: dict[str, str] = {t: ("" if t in config.targets else "not selected") for t in ALL_TARGETS}
        self.servers: dict[str, int] = {}
        self.server_logs: dict[str, str] = {}
        self.setup: dict[str, Any] = {}
        self.rows: list[Row] = []
        self.loadgens: list[Loadgen] = []
        self.retries_left = NOISE_RETRY_BUDGET
        self.workdir = tempfile.mkdtemp(prefix="chatmem-harness-")
        stack.callback(shutil.rmtree, self.workdir, ignore_errors=True)

    def active(self, target: str) -> bool:
        """Selected and not marked unavailable."""
        return self.status[target] == ""

    def log(self, text: str) -> None:
        """Progress to stderr (the table goes to stdout)."""
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    def start_infrastructure(self) -> None:
        """Start Redis (with the search modules when langchain-redis needs them) and PostgreSQL."""
        for peer in PEERS:
            if self.active(peer) and (why := peer_status(peer)):
                self.status[peer] = why
        redis: RedisProcess | None = None
        if self.active(LANGCHAIN_REDIS):
            found = find_module_redis()
            if isinstance(found, str):
                self.status[LANGCHAIN_REDIS] = f"unavailable: {found}"
            else:
                candidate = ModuleRedisProcess(found)
                try:
                    candidate.start()
                except (RuntimeError, TimeoutError, OSError) as exc:
                    candidate.close()
                    self.status[LANGCHAIN_REDIS] = f"unavailable: valkey-server with modules did not start: {exc}"
                else:
                    redis = candidate
                    self.setup["redis"] = f"{server_version(found.server)} + {', '.join(found.modules)}"
        if redis is None:
            redis = RedisProcess()
            redis.start()
            self.setup["redis"] = server_version(redis.binary)
        self.redis = redis
        self.stack.callback(redis.close)
        self.pg = PostgresProcess()
        self.stack.callback(self.pg.close)
        self.pg.start()
        names = [DATABASES[t] for t in DATABASES if self.active(t)]
        asyncio.run(create_databases(self.pg.url, names))
        self.setup["postgres"] = "fsync=off, full_page_writes=off, shared_buffers=128MB (devtools/postgres.py)"

    def start_servers(self) -> None:
        """Start the chatmem servers and limit-grpc as processes of their own."""
        for target, mode in ((CHATMEM_WB, "write_behind"), (CHATMEM_WT, "write_through")):
            if not self.active(target):
                continue
            env = {
                "DATABASE__URL": db_url(self.pg.url, DATABASES[target]),
                "REDIS__URL": self.redis.url,
                "REDIS__KEY_PREFIX": REDIS_PREFIXES[target],
                "MEMORY__WRITE_MODE": mode,
                "MEMORY__MAX_THREAD_MESSAGES": str(self.config.window),
                "LOG_LEVEL": "WARNING",
            }
            if self.config.server_workers > 1:
                env["GRPC__WORKERS"] = str(self.config.server_workers)
            server = ServerProcess(env, self.workdir)
            server.start()
            self.stack.callback(server.stop)
            assert server.proc is not None
            self.servers[target] = server.proc.pid
            self.server_logs[target] = server.log_path
            self.setup[f"{target}_address"] = server.target
        if self.active(LIMIT_GRPC):
            limit = LimitGrpcProcess(self.workdir, self.config.window, self.config.content_chars)
            self.stack.callback(limit.stop)
            self.servers[LIMIT_GRPC] = limit.proc.pid
            self.server_logs[LIMIT_GRPC] = limit.log_path
            self.setup[f"{LIMIT_GRPC}_address"] = limit.target

    def specs(self) -> dict[str, dict[str, Any]]:
        """What each load generator needs to reach each active target."""
        bulk_in_chatmem = self.active(CHATMEM_WB)
        bulk_url = db_url(self.pg.url, DATABASES[CHATMEM_WB if bulk_in_chatmem else LIMIT_POSTGRES])
        out: dict[str, dict[str, Any]] = {}
        for target in ALL_TARGETS:
            if not self.active(target):
                continue
            if target in CHATMEM:
                out[target] = {
                    "kind": "chatmem",
                    "address": self.setup[f"{target}_address"],
                    "redis_url": self.redis.url,
                    "redis_prefix": REDIS_PREFIXES[target],
                    "write_mode": "write_behind" if target == CHATMEM_WB else "write_through",
                    "bulk_db_url": bulk_url if target == CHATMEM_WB else "",
                    "channels": self.config.channels or (1 if self.config.server_workers == 1 else 4),
                }
            elif target == LIMIT_GRPC:
                out[target] = {"kind": target, "address": self.setup[f"{target}_address"]}
            elif target == LIMIT_REDIS:
                out[target] = {"kind": target, "redis_url": self.redis.url, "redis_prefix": REDIS_PREFIXES[target]}
            elif target == LIMIT_POSTGRES:
                out[target] = {
                    "kind": target,
                    "db_url": db_url(self.pg.url, DATABASES[target]),
                    "read_db_url": bulk_url,
                    "bulk": not bulk_in_chatmem,
                }
            elif target == LANGCHAIN_POSTGRES:
                out[target] = {"kind": target, "db_url": db_url(self.pg.url, DATABASES[target])}
            elif target == LANGCHAIN_REDIS:
                out[target] = {
                    "kind": target,
                    "redis_url": self.redis.url,
                    "redis_prefix": REDIS_PREFIXES[target],
                    "index_name": "idx:lcr",
                }
        return out

    def start_loadgens(self) -> None:
        """Start the load generators and open every target in each; a target that fails is unavailable."""
        for i in range(self.config.loadgen_procs):
            lg = Loadgen(i, self.workdir)
            self.stack.callback(lg.stop)
            self.loadgens.append(lg)
        max_workers = math.ceil(max(self.config.concurrency) / self.config.loadgen_procs)
        msg = {
            "cmd": "open",
            "workload": self.workload.to_json(),
            "targets": self.specs(),
            "max_workers": max_workers,
            "timeout_s": OPEN_TIMEOUT_S,
        }
        # One after the other: langchain-redis (re)creates its search index when it opens, and two processes
        # doing that at once would race.
        for lg in self.loadgens:
            for target, error in lg.request(msg, OPEN_TIMEOUT_S * 2)["errors"].items():
                self.fail(target, f"could not connect: {error}")

    def fail(self, target: str, why: str) -> None:
        """Mark a target unavailable, with its server's output when it has one."""
        if self.status[target]:
            return
        tail = ""
        if target in self.server_logs:
            with contextlib.suppress(OSError):
                tail = pathlib.Path(self.server_logs[target]).read_text(errors="replace")[-1500:]
        self.status[target] = f"unavailable: {why}"
        self.log(f"{target} {self.status[target]}" + (f"\n  server output:\n{tail}" if tail else ""))

    def preload(self) -> None:
        """Preload every target from the first load generator, then drain chatmem's outbox and VACUUM."""
        started = time.perf_counter()
        names = [t for t in ALL_TARGETS if self.active(t)]
        reply = self.loadgens[0].request({"cmd": "preload", "targets": names}, PRELOAD_TIMEOUT_S)
        for target, result in reply["results"].items():
            if "error" in result:
                self.fail(target, f"preload failed: {result['error']}")
        self.setup["preload"] = reply["results"]
        if self.active(CHATMEM_WB):
            self.setup["preload_drain_s"] = round(
                wait_drained(self.redis.url, REDIS_PREFIXES[CHATMEM_WB], DRAIN_TIMEOUT_S), 2
            )
        asyncio.run(vacuum([db_url(self.pg.url, DATABASES[t]) for t in DATABASES if self.active(t)]))
        self.setup["preload_total_s"] = round(time.perf_counter() - started, 1)

    def measure_idle(self, seconds: float) -> None:
        """Record each process's CPU while nothing is sent (background tasks: pollers, the outbox flusher)."""
        before, at0 = proc_snapshot(), time.monotonic()
        time.sleep(seconds)
        after, at1 = proc_snapshot(), time.monotonic()
        pids = {**self.servers, "redis": self.redis.proc.pid if self.redis.proc else None}
        pids["postgres"] = self.pg.proc.pid if self.pg.proc else None
        self.setup["idle_cores"] = {
            name: round((tree_seconds(pid, after) - tree_seconds(pid, before)) / (at1 - at0), 3)
            for name, pid in pids.items()
        }

    def plan(self) -> list[tuple[str, int, str]]:
        """The phases: operation-major (so that the targets of one operation run close together in time)."""
        order = [RPC, READ, HYDRATE, STREAM, *(chat_op(n) for n in self.config.chat_lengths), APPEND]
        return [
            (op, c, target)
            for op in order
            for c in self.config.concurrency
            for target in ALL_TARGETS
            if target in self.config.targets
            and op in supported_ops(target, self.config.chat_lengths)
            and (not self.config.ops or op in self.config.ops)
        ]

    def run_phases(self) -> None:
        """Run every planned phase of every target still available."""
        plan = self.plan()
        for n, (op, c, target) in enumerate(plan, 1):
            if not self.active(target):
                continue
            try:
                row = self.phase(op, c, target, f"p{n}")
                # Another program on this small machine (a build, a test run) skews a phase: measure it again.
                while row.unattributed_cores > NOISY_CORES and row.attempts <= self.config.noise_retries:
                    if self.retries_left <= 0:
                        break
                    self.retries_left -= 1
                    self.log(f"{op} c={c} {target}: {row.unattributed_cores} cores busy elsewhere, measuring again")
                    time.sleep(NOISE_PAUSE_S)
                    attempts = row.attempts
                    row = self.phase(op, c, target, f"p{n}r{attempts}")
                    row.attempts = attempts + 1
            except (RuntimeError, TimeoutError, OSError) as exc:
                self.fail(target, f"{op} c={c} failed: {exc}")
                continue
            self.rows.append(row)
            self.log(
                f"{n}/{len(plan)} {op:10} c={c:<3} {target:18} {row.ops_per_s:10.1f} {row.unit}/s  "
                f"p50 {row.p50_ms:8.3f} ms  p99 {row.p99_ms:8.3f} ms  server CPU {fmt_us(row.server_cpu_us_per_op)} us"
                + (f"  errors {row.errors}" if row.errors else "")
                + (f"  anomalies {row.anomalies}" if row.anomalies else "")
            )

    def phase(self, op: str, c: int, target: str, phase_id: str) -> Row:
        """Prepare, warm up, measure one phase across the load generators, and summarise it."""
        cfg = self.config
        n = len(self.loadgens)
        shares = [(lg, [g for g in range(c) if g % n == lg.index]) for lg in self.loadgens]
        shares = [(lg, workers) for lg, workers in shares if workers]
        for lg, workers in shares:
            lg.request({"cmd": "prepare", "target": target, "op": op, "workers": workers, "concurrency": c}, 300)
        t_start = time.monotonic() + cfg.warmup_s
        t_end = t_start + cfg.seconds
        for lg, workers in shares:
            lg.send(
                {
                    "cmd": "phase",
                    "target": target,
                    "op": op,
                    "workers": workers,
                    "concurrency": c,
                    "t_start": t_start,
                    "t_end": t_end,
                    "max_ops": cfg.max_ops,
                    "phase": phase_id,
                }
            )
        time.sleep(max(0.0, t_start - time.monotonic()))
        before, busy0, at0 = proc_snapshot(), machine_busy_seconds(), time.monotonic()
        time.sleep(max(0.0, t_end - time.monotonic()))
        after, busy1, at1 = proc_snapshot(), machine_busy_seconds(), time.monotonic()
        replies, failures = [], []
        for lg, _ in shares:  # every reply is read, so that a failure in one leaves no other unread
            try:
                replies.append(lg.receive(PHASE_GRACE_S + cfg.seconds))
            except RuntimeError as exc:
                failures.append(str(exc))
        if failures:
            raise RuntimeError("; ".join(failures))
        drain = None
        if target == CHATMEM_WB and (op == APPEND or is_chat(op)):
            drain = round(wait_drained(self.redis.url, REDIS_PREFIXES[CHATMEM_WB], DRAIN_TIMEOUT_S), 3)

        def cpu(pids: Sequence[int | None]) -> float:
            return sum(tree_seconds(p, after) - tree_seconds(p, before) for p in pids)

        wall = at1 - at0
        server_pid = self.servers.get(target)
        server_s = cpu([server_pid]) if server_pid else None
        redis_s = cpu([self.redis.proc.pid if self.redis.proc else None])
        pg_s = cpu([self.pg.proc.pid if self.pg.proc else None])
        lg_s = cpu([lg.proc.pid for lg in self.loadgens])
        other_s = cpu([pid for t, pid in self.servers.items() if t != target])
        # Busy CPU of the machine that none of the run's processes accounts for: other programs, and kernel
        # work (loopback networking softirqs) not charged to a process. A large figure means a noisy phase.
        unattributed = (busy1 - busy0) - ((server_s or 0.0) + redis_s + pg_s + lg_s + other_s)
        latencies = sorted(v for r in replies for v in r["latencies_us"])
        units = sum(r["units"] for r in replies)
        ms = [v / 1000 for v in latencies]
        errors: dict[str, int] = {}
        anomalies: dict[str, int] = {}
        for r in replies:
            for k, v in r["errors"].items():
                errors[k] = errors.get(k, 0) + v
            for k, v in r["tags"].items():
                anomalies[k] = anomalies.get(k, 0) + v

        def per_unit(seconds: float | None) -> float | None:
            if seconds is None:
                return None
            return round(seconds * 1e6 / units, 2) if units else math.nan

        return Row(
            op=op,
            concurrency=c,
            target=target,
            unit="msg" if replies[0]["per_message"] else "op",
            calls=len(latencies),
            units=units,
            wall_s=round(wall, 3),
            ops_per_s=round(units / wall, 1) if wall > 0 else math.nan,
            p50_ms=round(percentile(ms, 50), 3),
            p90_ms=round(percentile(ms, 90), 3),
            p99_ms=round(percentile(ms, 99), 3),
            mean_ms=round(sum(ms) / len(ms), 3) if ms else math.nan,
            max_ms=round(ms[-1], 3) if ms else math.nan,
            server_cpu_us_per_op=per_unit(server_s),
            redis_cpu_us_per_op=per_unit(redis_s) or 0.0,
            postgres_cpu_us_per_op=per_unit(pg_s) or 0.0,
            loadgen_cpu_us_per_op=per_unit(lg_s) or 0.0,
            other_servers_cpu_us_per_op=per_unit(other_s) or 0.0,
            server_side_cores=round(((server_s or 0.0) + redis_s + pg_s) / wall, 2) if wall > 0 else math.nan,
            loadgen_cores=round(lg_s / wall, 2) if wall > 0 else math.nan,
            unattributed_cores=round(unattributed / wall, 2) if wall > 0 else math.nan,
            errors=errors,
            first_error=next((r["first_error"] for r in replies if r["first_error"]), ""),
            anomalies=anomalies,
            warmup_calls=sum(r["warmup_calls"] for r in replies),
            hit_max_ops=any(r["hit_max_ops"] for r in replies),
            drain_after_s=drain,
        )

    def server_problems(self) -> dict[str, list[str]]:
        """Lines of the servers' output that look like trouble (the write_behind AOF warning is expected)."""
        out: dict[str, list[str]] = {}
        for target, path in self.server_logs.items():
            with contextlib.suppress(OSError):
                lines = pathlib.Path(path).read_text(errors="replace").splitlines()
                bad = [x for x in lines if any(w in x for w in ("ERROR", "CRITICAL", "Traceback", "Exception"))]
                if bad:
                    out[target] = bad[:50]
        return out


# --- reporting ----------------------------------------------------------------------------------------


def fmt_us(v: float | None) -> str:
    """A CPU figure in µs, or '-' when the target has no server process."""
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.0f}"


def fmt_num(v: float | None, digits: int = 1) -> str:
    """A number, or 'n/a' for NaN or None."""
    return "n/a" if v is None or math.isnan(v) else f"{v:.{digits}f}"


def no_nan(value: Any) -> Any:
    """The same structure with every NaN replaced by None, so that the JSON is strict."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: no_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [no_nan(v) for v in value]
    return value


def format_table(rows: Sequence[Row], status: dict[str, str]) -> str:
    """Rows = (operation, concurrency, target); the CPU columns are µs per op (per message for streams)."""
    header = ["operation", "c", "target", "ops/s", "p50 ms", "p99 ms", "server CPU us/op", "redis us/op",
              "pg us/op", "loadgen us/op", "cores srv+db/lg"]  # fmt: skip
    lines: list[list[str]] = []
    for r in rows:
        op = f"{r.op} (per msg)" if r.unit == "msg" else r.op
        lines.append(
            [op, str(r.concurrency), r.target, fmt_num(r.ops_per_s), fmt_num(r.p50_ms, 3), fmt_num(r.p99_ms, 3),
             fmt_us(r.server_cpu_us_per_op), fmt_us(r.redis_cpu_us_per_op), fmt_us(r.postgres_cpu_us_per_op),
             fmt_us(r.loadgen_cpu_us_per_op), f"{r.server_side_cores:.2f}/{r.loadgen_cores:.2f}"]
        )  # fmt: skip
    for target, why in status.items():
        if why and why != "not selected":
            lines.append(["(all)", "", target, why, "", "", "", "", "", "", ""])
    widths = [max(len(x[i]) for x in (header, *lines)) for i in range(len(header))]
    widths[3] = min(widths[3], 12)

    def line(cells: Sequence[str]) -> str:
        out = []
        for i, (cell, width) in enumerate(zip(cells, widths, strict=True)):
            out.append(cell.ljust(width) if i < 3 or len(cell) > width else cell.rjust(width))
        return "  ".join(out).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(x) for x in lines)])


def find(rows: Sequence[Row], target: str, op: str, c: int) -> Row | None:
    """The row of one phase, if it ran."""
    return next((r for r in rows if r.target == target and r.op == op and r.concurrency == c), None)


def ratio_lines(rows: Sequence[Row], config: Config) -> list[str]:
    """chatmem's throughput over each limit's and each peer's, per operation and concurrency."""
    out = []
    for r in rows:
        if r.target not in CHATMEM:
            continue
        parts = []
        for other in (*LIMITS, *PEERS):
            o = find(rows, other, RPC if other == LIMIT_GRPC and r.op in (READ, APPEND) else r.op, r.concurrency)
            if o is None or not o.ops_per_s or math.isnan(o.ops_per_s) or math.isnan(r.ops_per_s):
                continue
            parts.append(f"{r.ops_per_s / o.ops_per_s:.2f}x {other}")
        cpu = ""
        grpc = find(rows, LIMIT_GRPC, RPC, r.concurrency)
        if r.op in (READ, APPEND) and grpc and grpc.server_cpu_us_per_op and r.server_cpu_us_per_op:
            cpu = f"; server CPU/op {r.server_cpu_us_per_op / grpc.server_cpu_us_per_op:.2f}x limit-grpc's"
        if parts or cpu:
            out.append(f"{r.op:10} c={r.concurrency:<3} {r.target:11} ops/s = " + ", ".join(parts) + cpu)
    return out


@dataclass
class Check:
    """One performance target of issue 5."""

    name: str
    value: float | None
    bound: float | None
    relation: str  # "<=" or ">="
    detail: str = ""

    @property
    def verdict(self) -> str:
        """PASS, FAIL, or n/a when a figure is missing."""
        if self.value is None or self.bound is None or math.isnan(self.value) or math.isnan(self.bound):
            return "n/a"
        ok = self.value <= self.bound if self.relation == "<=" else self.value >= self.bound
        return "PASS" if ok else "FAIL"


def checks(rows: Sequence[Row], config: Config) -> list[Check]:
    """The targets of issue 5, computed from this run's rows (at the lowest and highest concurrency)."""
    lo, hi = min(config.concurrency), max(config.concurrency)
    small, big = min(config.chat_lengths), max(config.chat_lengths)
    out: list[Check] = []

    def get(target: str, op: str, c: int) -> Row | None:
        return find(rows, target, op, c)

    for label, op in (("GetHistory(50) cache hit", READ), ("AppendMessages write_behind", APPEND)):
        for c in sorted({lo, hi}):
            cm, lg = get(CHATMEM_WB, op, c), get(LIMIT_GRPC, RPC, c)
            value = bound = None
            if cm and lg and cm.server_cpu_us_per_op is not None and lg.server_cpu_us_per_op:
                value, bound = cm.server_cpu_us_per_op / lg.server_cpu_us_per_op, 1.5
            detail = (
                f"{fmt_us(cm.server_cpu_us_per_op)} vs {fmt_us(lg.server_cpu_us_per_op)} us/op" if cm and lg else ""
            )
            out.append(Check(f"{label}: server CPU/op / limit-grpc's, c={c}", value, bound, "<=", detail))
    for label, op in (("GetHistory(50) cache hit", READ), ("AppendMessages write_behind", APPEND)):
        cm, lg = get(CHATMEM_WB, op, lo), get(LIMIT_GRPC, RPC, lo)
        value = bound = None
        if cm and lg:
            value, bound = cm.p50_ms, lg.p50_ms + 0.3
        out.append(
            Check(f"{label}: p50 ms at c={lo} vs limit-grpc p50 + 0.3 ms", value, bound, "<=",
                  f"limit-grpc p50 {lg.p50_ms:.3f} ms" if lg else "")
        )  # fmt: skip
    for label, op in (("GetHistory(50) cache hit", READ), ("AppendMessages write_behind", APPEND)):
        cm, lg = get(CHATMEM_WB, op, hi), get(LIMIT_GRPC, RPC, hi)
        value = cm.ops_per_s / lg.ops_per_s if cm and lg and lg.ops_per_s else None
        out.append(Check(f"{label}: ops/s at c={hi} / limit-grpc's", value, 0.65, ">="))
    for length, wants in ((small, ((LANGCHAIN_POSTGRES, 1.5), (LANGCHAIN_REDIS, 1.2))),
                          (big, ((LANGCHAIN_POSTGRES, 5.0), (LANGCHAIN_REDIS, 5.0)))):  # fmt: skip
        for peer, bound in wants:
            cm, p = get(CHATMEM_WB, chat_op(length), hi), get(peer, chat_op(length), hi)
            value = cm.ops_per_s / p.ops_per_s if cm and p and p.ops_per_s else None
            out.append(
                Check(f"chat loop, {length} msgs/thread, c={hi}: chatmem-wb ops/s / {peer}'s", value, bound, ">=")
            )
    cm, lp, lg = get(CHATMEM_WB, HYDRATE, lo), get(LIMIT_POSTGRES, HYDRATE, lo), get(LIMIT_GRPC, RPC, lo)
    out.append(
        Check(
            f"hydration p50 ms, {config.hydrate_messages} msgs/thread, c={lo}"
            " vs 1.3x (limit-postgres + limit-grpc p50)",
            cm.p50_ms if cm else None,
            1.3 * (lp.p50_ms + lg.p50_ms) if lp and lg else None,
            "<=",
        )
    )
    cm, lp = get(CHATMEM_WB, STREAM, lo), get(LIMIT_POSTGRES, STREAM, lo)
    out.append(
        Check(
            f"StreamHistory msgs/s, {config.stream_messages} msgs, c={lo} / limit-postgres scan's",
            cm.ops_per_s / lp.ops_per_s if cm and lp and lp.ops_per_s else None,
            0.5,
            ">=",
            f"{cm.ops_per_s:.0f} vs {lp.ops_per_s:.0f} msgs/s" if cm and lp else "",
        )
    )
    wt, lp = get(CHATMEM_WT, APPEND, hi), get(LIMIT_POSTGRES, APPEND, hi)
    out.append(
        Check(
            f"write_through append ops/s at c={hi} / limit-postgres append's",
            wt.ops_per_s / lp.ops_per_s if wt and lp and lp.ops_per_s else None,
            0.5,
            ">=",
        )
    )
    return out


def format_checks(found: Sequence[Check]) -> str:
    """One line per target: verdict, value, relation, bound."""
    lines = []
    for c in found:
        value = "n/a" if c.value is None else f"{c.value:.3f}"
        bound = "n/a" if c.bound is None else f"{c.bound:.3f}"
        lines.append(f"{c.verdict:4}  {c.name}: {value} {c.relation} {bound}" + (f"  ({c.detail})" if c.detail else ""))
    return "\n".join(lines)


def cores_summary(rows: Sequence[Row]) -> str:
    """Cores used by each side: the mean and the largest over the phases."""
    if not rows:
        return "no phases ran"
    srv = [r.server_side_cores for r in rows]
    lg = [r.loadgen_cores for r in rows]
    return (
        "cores used (CPU-seconds / wall-seconds), server side (server + Redis + PostgreSQL): "
        f"mean {sum(srv) / len(srv):.2f}, max {max(srv):.2f}; load generator: mean {sum(lg) / len(lg):.2f}, "
        f"max {max(lg):.2f}; machine: {os.cpu_count()}"
    )


# --- command line -------------------------------------------------------------------------------------


def parse_int_list(text: str) -> tuple[int, ...]:
    """'1,32' -> (1, 32)."""
    values = tuple(int(x) for x in text.split(",") if x.strip())
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return values


def parse_args(argv: Sequence[str] | None) -> Config:
    """Build the configuration from the command line."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a tiny workload: 4 threads, 0.3 s per phase, c=1,2")
    parser.add_argument("--seconds", type=float, help="measured time per phase (default 5)")
    parser.add_argument("--warmup", type=float, help="warm-up time per phase (default 1)")
    parser.add_argument("--concurrency", type=parse_int_list, help="concurrent clients per phase (default 1,32)")
    parser.add_argument("--targets", help=f"comma-separated subset of {','.join(ALL_TARGETS)}")
    parser.add_argument("--ops", help="comma-separated subset of rpc,read,hydrate,stream,chat@<n>,append")
    parser.add_argument("--threads", type=int, help="threads of the read/append and short chat sets (default 200)")
    parser.add_argument("--chat-lengths", type=parse_int_list, help="messages per thread of the chat loops (60,1000)")
    parser.add_argument("--long-threads", type=int, help="threads per long chat set (default 64)")
    parser.add_argument("--hydrate-messages", type=int, help="messages per hydration thread (default 100000)")
    parser.add_argument("--stream-messages", type=int, help="messages of the streamed thread (default 200000)")
    parser.add_argument("--max-ops", type=int, help="most calls per phase (default 1000000)")
    parser.add_argument("--loadgen-procs", type=int, help="load generator processes (default 2)")
    parser.add_argument("--server-workers", type=int, help="GRPC__WORKERS of the chatmem servers (default 1)")
    parser.add_argument(
        "--channels", type=int, help="chatmem channels per load generator (default 1; 4 with --server-workers > 1)"
    )
    parser.add_argument(
        "--noise-retries",
        type=int,
        help=f"measure a phase again when over {NOISY_CORES} cores were busy outside the run (default 1, "
        f"at most {NOISE_RETRY_BUDGET} per run)",
    )
    parser.add_argument("--results-dir", help="where the JSON goes (default bench/results)")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else Config()
    targets = None
    if args.targets:
        targets = tuple(t.strip() for t in args.targets.split(",") if t.strip())
        unknown = sorted(set(targets) - set(ALL_TARGETS))
        if unknown:
            parser.error(f"unknown targets {unknown}; choose from {', '.join(ALL_TARGETS)}")
    ops = tuple(x.strip() for x in args.ops.split(",") if x.strip()) if args.ops else None
    overrides = {
        "ops": ops,
        "seconds": args.seconds,
        "warmup_s": args.warmup,
        "concurrency": args.concurrency,
        "targets": targets,
        "threads": args.threads,
        "chat_lengths": args.chat_lengths,
        "long_threads": args.long_threads,
        "hydrate_messages": args.hydrate_messages,
        "stream_messages": args.stream_messages,
        "max_ops": args.max_ops,
        "loadgen_procs": args.loadgen_procs,
        "server_workers": args.server_workers,
        "channels": args.channels,
        "noise_retries": args.noise_retries,
        "results_dir": args.results_dir,
    }
    config = replace(base, **{k: v for k, v in overrides.items() if v is not None})
    if config.seconds <= 0 or config.warmup_s < 0 or config.max_ops < 1 or config.loadgen_procs < 1:
        parser.error("--seconds must be positive, --warmup >= 0, --max-ops and --loadgen-procs >= 1")
    need = max(config.concurrency)
    if config.threads < need or config.long_threads < need:
        parser.error(f"--threads and --long-threads must be at least the highest concurrency ({need})")
    if any(n < config.window for n in (config.messages, *config.chat_lengths, config.hydrate_messages)):
        parser.error(f"every thread must hold at least the window ({config.window} messages)")
    return config


def run(config: Config, argv: Sequence[str] = ()) -> tuple[dict[str, Any], pathlib.Path]:
    """Run everything, write the JSON report and return it with its path."""
    started = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        h = Harness(config, stack)
        h.log(f"workdir {h.workdir}")
        busy0, at0 = machine_busy_seconds(), time.monotonic()
        time.sleep(BACKGROUND_SAMPLE_S)
        h.setup["background_cores_before_start"] = round((machine_busy_seconds() - busy0) / (time.monotonic() - at0), 2)
        h.log(f"machine busy before the run: {h.setup['background_cores_before_start']} cores")
        h.start_infrastructure()
        h.start_servers()
        h.start_loadgens()
        h.log("targets open: " + ", ".join(t for t in ALL_TARGETS if h.active(t)))
        h.preload()
        h.log(f"preloaded in {h.setup['preload_total_s']}s: {json.dumps(h.setup['preload'])}")
        h.measure_idle(min(2.0, config.seconds * 2))
        h.log(f"idle CPU (cores): {h.setup['idle_cores']}")
        h.run_phases()
        problems = h.server_problems()
        loadgen_logs = {lg.index: lg.log_tail(2000) for lg in h.loadgens}
    total_s = time.perf_counter() - t0
    found = checks(h.rows, config)
    machine = machine_info()
    report: dict[str, Any] = {
        "benchmark": "harness",
        "date_utc": started.isoformat(timespec="seconds"),
        "command": [sys.executable, "-m", "bench", *argv],
        "git": git_state(),
        "config": asdict(config),
        "machine": machine,
        "targets": {t: (why or "ok") for t, why in h.status.items()},
        "setup": {
            **h.setup,
            "topology": (
                f"{config.loadgen_procs} load generator process(es), the chatmem servers and limit-grpc each in a "
                "process of its own, one Redis and one PostgreSQL shared by every target, all on 127.0.0.1"
            ),
            "loadgen_event_loop": "uvloop",
        },
        "workload": h.workload.to_json(),
        "phases": [asdict(r) for r in h.rows],
        "ratios": ratio_lines(h.rows, config),
        "checks": [{**asdict(c), "verdict": c.verdict} for c in found],
        "cores": cores_summary(h.rows),
        "server_problems": problems,
        "loadgen_log_tails": loadgen_logs,
        "total_seconds": round(total_s, 1),
    }
    out_dir = pathlib.Path(config.results_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"harness-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(no_nan(report), indent=2, allow_nan=False) + "\n")
    return report, path


def main(argv: Sequence[str] | None = None) -> int:
    """Run the harness and print the table, the ratios and the targets.

    Returns:
        0, or 1 when a selected target produced no figures or a call failed.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    config = parse_args(args)
    missing = [f"{t}: {why}" for t in PEERS if t in config.targets and (why := peer_status(t))]
    if missing:
        print("peers missing, the run goes on without them:\n  " + "\n  ".join(missing), file=sys.stderr)
    report, path = run(config, args)
    rows = [Row(**r) for r in no_nan(report["phases"])]
    m = report["machine"]
    print(
        f"chatmem benchmark harness, {report['date_utc']}, git {report['git']}, {m['nproc']} cores ({m['cpu_model']}), "
        f"python {m['python']}, grpcio {m['grpcio']}"
    )
    print(f"redis: {report['setup'].get('redis')}; postgres: {m['postgres']} ({report['setup'].get('postgres')})")
    print(
        f"{config.loadgen_procs} load generator process(es); machine busy before the run: "
        f"{report['setup'].get('background_cores_before_start')} cores; noisy phases measured again: "
        f"{sum(r.attempts - 1 for r in rows)}"
    )
    print(
        f"{config.seconds}s per phase after {config.warmup_s}s warm-up; {config.threads} threads x {config.messages} "
        f"msgs of {config.content_chars} chars; chat at {config.chat_lengths} msgs/thread; "
        f"hydration {config.hydrate_messages} msgs/thread; stream {config.stream_messages} msgs"
    )
    print()
    print(format_table(rows, report["targets"]))
    print()
    print("chatmem / limit and chatmem / peer:")
    print("\n".join(report["ratios"]) or "(none)")
    print()
    print("targets:")
    print(format_checks([Check(**{k: v for k, v in c.items() if k != "verdict"}) for c in report["checks"]]))
    print()
    print(report["cores"])
    problems = [
        f"{r.op} c={r.concurrency} {r.target}: {sum(r.errors.values())} failed calls, first: {r.first_error}"
        for r in rows
        if r.errors
    ]
    problems += [f"{r.op} c={r.concurrency} {r.target}: anomalous responses {r.anomalies}" for r in rows if r.anomalies]
    problems += [f"{r.op} c={r.concurrency} {r.target}: no call completed in the window" for r in rows if not r.units]
    problems += [
        f"{r.op} c={r.concurrency} {r.target}: {r.unattributed_cores:.2f} cores busy outside the run's processes "
        "(another program, or kernel work): a noisy phase"
        for r in rows
        if r.unattributed_cores is not None and r.unattributed_cores > NOISY_CORES
    ]
    problems += [f"{t}: {why}" for t, why in report["targets"].items() if why not in ("ok", "not selected")]
    for target, lines in report["server_problems"].items():
        problems.append(f"{target} output:\n    " + "\n    ".join(lines[:20]))
    print("problems:" if problems else "problems: none", *problems, sep="\n  ")
    print(f"total {report['total_seconds']}s; results: {path}")
    selected_ok = all(
        any(r.target == t and r.units for r in rows) for t in config.targets if report["targets"].get(t) == "ok"
    )
    failed_calls = any(r.errors for r in rows)
    return 0 if selected_ok and not failed_calls else 1
