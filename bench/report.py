"""The harness's report: the table, the ratios to the limits and peers, the cores summary, the git state."""

from __future__ import annotations

import math
import os
import subprocess
from collections.abc import Sequence
from typing import Any

from bench.config import REPO_ROOT, Config, Row
from bench.workload import APPEND, CHATMEM, LIMIT_GRPC, LIMITS, PEERS, READ, RPC


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


def git_state() -> str:
    """Short commit hash, plus ' dirty' when ``git status --porcelain`` shows anything."""

    def run(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, cwd=REPO_ROOT).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = run("rev-parse", "--short", "HEAD").strip() or "unknown"
    return commit + (" dirty" if run("status", "--porcelain").strip() else "")
