"""CPU per op with 1 and 2 server workers: the harness targets chatmem-wb-w1 and chatmem-wb-w2, and their check.

Two cores cannot show what more workers gain in throughput (the load generators, Redis and PostgreSQL share
the same cores), but they can show whether a second worker costs more CPU per op. If it does not, a machine
with more cores serves about one core's worth of ops per worker. Both servers run write_behind on the same
Redis and PostgreSQL as the other targets, each with its own database and key prefix, and are called over
CHANNELS channels per load generator (each its own connection: SO_REUSEPORT spreads connections, not calls);
the 1-worker server gets the same channels, so that the comparison differs in the worker count only. They
run at the highest concurrency only, where a second worker has work.
"""

from __future__ import annotations

from collections.abc import Sequence

from bench.config import Config, Row
from bench.report import find, fmt_us
from bench.workload import APPEND, CHATMEM_WB_W1, CHATMEM_WB_W2, PER_CORE, READ

WORKERS = {CHATMEM_WB_W1: 1, CHATMEM_WB_W2: 2}
CHANNELS = 4
BOUND = 1.2
OPS = ((READ, "cached GetHistory(50)"), (APPEND, "write_behind AppendMessages"))


def runs_at(target: str, concurrency: int, config: Config) -> bool:
    """Whether the phase (target, concurrency) is planned: the per-core targets run at the highest only."""
    return target not in PER_CORE or concurrency == max(config.concurrency)


def server_env(target: str) -> dict[str, str]:
    """The settings of a per-core server beyond the other chatmem servers' (write_behind, its worker count)."""
    return {"MEMORY__WRITE_MODE": "write_behind", "GRPC__WORKERS": str(WORKERS[target])}


def spec_extra() -> dict[str, object]:
    """What the load generators need beyond a chatmem spec: the channels, and only the base threads preloaded."""
    return {"channels": CHANNELS, "preload_sets": ["base"]}


def pair(rows: Sequence[Row], op: str, c: int) -> tuple[Row | None, Row | None]:
    """The 1-worker and the 2-worker rows of one operation at concurrency ``c``."""
    return find(rows, CHATMEM_WB_W1, op, c), find(rows, CHATMEM_WB_W2, op, c)


def cpu_ratio(one: Row | None, two: Row | None) -> float | None:
    """2-worker server CPU per op / 1-worker's, or None when a figure is missing."""
    if one and two and one.server_cpu_us_per_op and two.server_cpu_us_per_op is not None:
        return two.server_cpu_us_per_op / one.server_cpu_us_per_op
    return None


def report_lines(rows: Sequence[Row], config: Config) -> list[str]:
    """The figures behind the checks: CPU/op (server, Redis, PostgreSQL) and ops/s with 1 and 2 workers."""
    c = max(config.concurrency)
    out = []
    for op, label in OPS:
        one, two = pair(rows, op, c)
        if not one or not two:
            continue
        ratio = cpu_ratio(one, two)
        shown = "n/a" if ratio is None else f"{ratio:.2f}x"
        out.append(
            f"CPU/op with 1 and 2 workers, {label}, c={c}, {CHANNELS} channels per load generator: server "
            f"{fmt_us(one.server_cpu_us_per_op)} / {fmt_us(two.server_cpu_us_per_op)} us ({shown}), "
            f"redis {fmt_us(one.redis_cpu_us_per_op)} / {fmt_us(two.redis_cpu_us_per_op)} us, "
            f"postgres {fmt_us(one.postgres_cpu_us_per_op)} / {fmt_us(two.postgres_cpu_us_per_op)} us; "
            f"ops/s {one.ops_per_s:.0f} / {two.ops_per_s:.0f}"
        )
    return out
