"""The saturation phase of the harness: chatmem-wb's chat loop with more clients than cores and CPU burners.

Overload must not be an outage (issue 16, target 5): with the load generators, CPU burners, Redis,
PostgreSQL and the server on the same cores, a Redis that answers slowly must not open the breaker and
send traffic to the store. The phase runs the chat loop (GetHistory, then AppendMessages of one exchange)
on chatmem-wb at ``Config.saturation_clients`` clients while two CPU burners per core spin, and reports the
share of RPCs served degraded (the responses' ``serving.degraded``), p50/p99, the calls that failed by
status (RESOURCE_EXHAUSTED is the server shedding, DEADLINE_EXCEEDED a deadline it let pass) and the load
average. The burners are processes of their own (``python -m bench.saturation --burn SECONDS``), each
bounded in time.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from bench.workload import CHATMEM_WB, chat_op

if TYPE_CHECKING:
    from bench.orchestrator import Harness

# A burner outlives the phase by this much at most, even if the harness dies without stopping it.
BURN_SLACK_S = 5.0
RPCS_PER_CHAT_CALL = 2  # GetHistory, then AppendMessages
# Twice as many spinning processes as cores: the server, Redis and PostgreSQL get a fraction of a core each.
BURNERS_PER_CORE = 2


def burn(seconds: float) -> None:
    """Spin one core for ``seconds`` (a busy loop that checks the clock now and then)."""
    until = time.monotonic() + seconds
    x = 0
    while time.monotonic() < until:
        for i in range(10_000):
            x ^= i


def start_burners(count: int, seconds: float) -> list[subprocess.Popen[bytes]]:
    """Start ``count`` burner processes of ``seconds`` each."""
    cmd = [sys.executable, "-m", "bench.saturation", "--burn", f"{seconds:.1f}"]
    return [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(count)]


def stop_burners(burners: Sequence[subprocess.Popen[bytes]]) -> None:
    """Stop the burners still running (each by its own pid) and reap them."""
    for p in burners:
        if p.poll() is None:
            p.terminate()
    for p in burners:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def run(h: Harness) -> dict[str, Any]:
    """Run the saturation phase on chatmem-wb and return its summary (also kept in ``h.setup``)."""
    cfg = h.config
    op = chat_op(min(cfg.chat_lengths))
    clients = cfg.saturation_clients
    cores = os.cpu_count() or 1
    load_before = os.getloadavg()
    burners = start_burners(BURNERS_PER_CORE * cores, cfg.warmup_s + cfg.saturation_s + BURN_SLACK_S)
    try:
        row = h.phase(op, clients, CHATMEM_WB, "saturation", seconds=cfg.saturation_s)
        load_during = os.getloadavg()
    finally:
        stop_burners(burners)
    rpcs = row.calls * RPCS_PER_CHAT_CALL
    degraded = row.anomalies.get("degraded", 0)
    failed = sum(row.errors.values())
    summary: dict[str, Any] = {
        "target": CHATMEM_WB,
        "op": op,
        "clients": clients,
        "burners": BURNERS_PER_CORE * cores,
        "seconds": cfg.saturation_s,
        "calls": row.calls,
        "rpcs": rpcs,
        "degraded_rpcs": degraded,
        "degraded_share": round(degraded / rpcs, 5) if rpcs else None,
        "ops_per_s": row.ops_per_s,
        "p50_ms": row.p50_ms,
        "p99_ms": row.p99_ms,
        "failed_calls": failed,
        "resource_exhausted": row.errors.get("RESOURCE_EXHAUSTED", 0),
        "deadline_exceeded": row.errors.get("DEADLINE_EXCEEDED", 0),
        "errors": row.errors,
        "first_error": row.first_error,
        "anomalies": row.anomalies,
        "server_side_cores": row.server_side_cores,
        "loadgen_cores": row.loadgen_cores,
        "other_cores": row.unattributed_cores,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_during": [round(x, 2) for x in load_during],
    }
    h.setup["saturation"] = summary
    return summary


def format_summary(s: dict[str, Any]) -> str:
    """One paragraph for the printed report."""
    share = s["degraded_share"]
    return (
        f"saturation: {s['op']} on {s['target']}, c={s['clients']} + {s['burners']} CPU burner(s), "
        f"{s['seconds']}s: {s['calls']} calls ({s['ops_per_s']} /s), p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms; "
        f"degraded {s['degraded_rpcs']}/{s['rpcs']} RPCs ({'n/a' if share is None else f'{100 * share:.2f}%'}); "
        f"failed calls {s['failed_calls']} (RESOURCE_EXHAUSTED {s['resource_exhausted']}, "
        f"DEADLINE_EXCEEDED {s['deadline_exceeded']}); load average before {s['loadavg_before'][0]}, "
        f"during {s['loadavg_during'][0]}; other processes {s['other_cores']} cores"
    )


def main(argv: Sequence[str] | None = None) -> None:
    """``--burn SECONDS``: be one CPU burner."""
    parser = argparse.ArgumentParser(prog="python -m bench.saturation")
    parser.add_argument("--burn", type=float, required=True, help="spin one core for this many seconds")
    args = parser.parse_args(argv)
    burn(min(args.burn, 600.0))


if __name__ == "__main__":
    main()
