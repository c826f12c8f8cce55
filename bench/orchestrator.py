"""One harness run: starts every process, preloads, and measures each phase with its CPU."""

from __future__ import annotations

import asyncio
import contextlib
import math
import pathlib
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from bench import percore, saturation
from bench.children import LimitGrpcProcess, Loadgen
from bench.config import (
    DATABASES,
    DRAIN_TIMEOUT_S,
    NOISE_PAUSE_S,
    NOISE_RETRY_BUDGET,
    NOISY_CORES,
    OPEN_TIMEOUT_S,
    PHASE_GRACE_S,
    PRELOAD_TIMEOUT_S,
    REDIS_PREFIXES,
    REPO_ROOT,
    Config,
    Row,
    peer_status,
)
from bench.cpu import machine_busy_seconds, proc_snapshot, tree_seconds
from bench.latency import percentile
from bench.redis_modules import ModuleRedisProcess, find_module_redis, server_version
from bench.report import fmt_us
from bench.sqlite_target import sqlite_spec, start_sqlite_server
from bench.stores import create_databases, db_url, vacuum, wait_drained
from bench.workload import (
    ALL_TARGETS,
    APPEND,
    CHATMEM,
    CHATMEM_SQLITE,
    CHATMEM_WB,
    CHATMEM_WT,
    HYDRATE,
    LANGCHAIN_POSTGRES,
    LANGCHAIN_REDIS,
    LIMIT_GRPC,
    LIMIT_POSTGRES,
    LIMIT_REDIS,
    PEERS,
    PER_CORE,
    READ,
    RPC,
    STREAM,
    chat_op,
    is_chat,
    supported_ops,
)
from devtools.postgres import PostgresProcess
from devtools.redis import RedisProcess
from devtools.server import ServerProcess


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
        self.pg = PostgresProcess({"fsync": "on", "full_page_writes": "on"})
        self.stack.callback(self.pg.close)
        self.pg.start()
        names = [DATABASES[t] for t in DATABASES if self.active(t)]
        asyncio.run(create_databases(self.pg.url, names))
        self.setup["postgres"] = "fsync=on, full_page_writes=on, shared_buffers=128MB (devtools/postgres.py)"

    def start_servers(self) -> None:
        """Start the chatmem servers and limit-grpc as processes of their own."""
        modes = {CHATMEM_WB: "write_behind", CHATMEM_WT: "write_through"}
        servers = [*modes.items(), *((t, "write_behind") for t in PER_CORE)]
        for target, mode in servers:
            if not self.active(target):
                continue
            env = {
                "DATABASE__URL": db_url(self.pg.url, DATABASES[target]),
                "REDIS__URL": self.redis.url,
                "REDIS__KEY_PREFIX": REDIS_PREFIXES[target],
                "MEMORY__WRITE_MODE": mode,
                "MEMORY__MAX_THREAD_MESSAGES": str(self.config.window),
                "LOG_LEVEL": "WARNING",
                # The server of this checkout (a worktree), not the one the venv's editable install names.
                "PYTHONPATH": str(REPO_ROOT),
                "GRPC__WORKERS": str(self.config.server_workers),
            }
            if target in PER_CORE:
                env.update(percore.server_env(target))
            server = ServerProcess(env, self.workdir)
            server.start()
            self.stack.callback(server.stop)
            assert server.proc is not None
            self.servers[target] = server.proc.pid
            self.server_logs[target] = server.log_path
            self.setup[f"{target}_address"] = server.target
        if self.active(CHATMEM_SQLITE):
            lite = start_sqlite_server(self.workdir, self.config.window, self.stack)
            assert lite.proc is not None
            self.servers[CHATMEM_SQLITE] = lite.proc.pid
            self.server_logs[CHATMEM_SQLITE] = lite.log_path
            self.setup[f"{CHATMEM_SQLITE}_address"] = lite.target
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
            if target == CHATMEM_SQLITE:
                out[target] = sqlite_spec(self.setup[f"{target}_address"], self.redis.url)
            elif target in CHATMEM or target in PER_CORE:
                out[target] = {
                    "kind": "chatmem",
                    "address": self.setup[f"{target}_address"],
                    "redis_url": self.redis.url,
                    "redis_prefix": REDIS_PREFIXES[target],
                    "write_mode": "write_through" if target == CHATMEM_WT else "write_behind",
                    "bulk_db_url": bulk_url if target == CHATMEM_WB else "",
                    "channels": self.config.channels or (1 if self.config.server_workers == 1 else 4),
                    **(percore.spec_extra() if target in PER_CORE else {}),
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
        results: dict[str, Any] = {}
        # The per-core servers after the others, so that their preloads do not add to the others' load.
        for group in ([t for t in ALL_TARGETS if t not in PER_CORE], list(PER_CORE)):
            names = [t for t in group if self.active(t)]
            if names:
                reply = self.loadgens[0].request({"cmd": "preload", "targets": names}, PRELOAD_TIMEOUT_S)
                results.update(reply["results"])
        for target, result in results.items():
            if "error" in result:
                self.fail(target, f"preload failed: {result['error']}")
        self.setup["preload"] = results
        if self.active(CHATMEM_WB):
            self.setup["preload_drain_s"] = round(
                wait_drained(self.redis.url, REDIS_PREFIXES[CHATMEM_WB], DRAIN_TIMEOUT_S), 2
            )
        for target in PER_CORE:
            if self.active(target):
                wait_drained(self.redis.url, REDIS_PREFIXES[target], DRAIN_TIMEOUT_S)
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
            and percore.runs_at(target, c, self.config)
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

    def run_saturation(self) -> None:
        """Run the saturation phase (bench/saturation.py) on chatmem-wb, when selected and still available."""
        if self.config.saturation_s <= 0 or not self.active(CHATMEM_WB):
            return
        try:
            summary = saturation.run(self)
        except (RuntimeError, TimeoutError, OSError) as exc:
            self.setup["saturation"] = {"error": f"{type(exc).__name__}: {exc}"}
            self.log(f"saturation phase failed: {exc}")
            return
        self.log(saturation.format_summary(summary))

    def phase(self, op: str, c: int, target: str, phase_id: str, seconds: float | None = None) -> Row:
        """Prepare, warm up, measure one phase (``seconds``: its length, else the run's) and summarise it."""
        cfg = self.config
        window_s = cfg.seconds if seconds is None else seconds
        n = len(self.loadgens)
        shares = [(lg, [g for g in range(c) if g % n == lg.index]) for lg in self.loadgens]
        shares = [(lg, workers) for lg, workers in shares if workers]
        for lg, workers in shares:
            lg.request({"cmd": "prepare", "target": target, "op": op, "workers": workers, "concurrency": c}, 300)
        t_start = time.monotonic() + cfg.warmup_s
        t_end = t_start + window_s
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
                replies.append(lg.receive(PHASE_GRACE_S + window_s))
            except RuntimeError as exc:
                failures.append(str(exc))
        if failures:
            raise RuntimeError("; ".join(failures))
        drain = None
        if target in (CHATMEM_WB, *PER_CORE) and (op == APPEND or is_chat(op)):
            drain = round(wait_drained(self.redis.url, REDIS_PREFIXES[target], DRAIN_TIMEOUT_S), 3)

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
