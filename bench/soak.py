"""Soak under faults: 16 clients append for 30+ s while PostgreSQL, Redis and the server are killed or frozen.

Run: ``.venv/bin/python -m bench.soak`` (about a minute). Everything runs on 127.0.0.1: a write_behind
server process over its own Redis (AOF, appendfsync always) and PostgreSQL. The schedule kills
PostgreSQL (SIGKILL), kills Redis (SIGKILL), freezes Redis (SIGSTOP for 4 s) and kills the server
(SIGKILL), each once, restarting each. Then the checker (devtools/chaos.py) compares every acknowledged
append with what PostgreSQL holds. Prints a report and writes it to bench/results/soak-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import pathlib
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError

from devtools import chaos
from devtools.postgres import PostgresProcess
from devtools.redis import RedisProcess
from devtools.server import ServerProcess

ROOT = pathlib.Path(__file__).resolve().parent.parent


async def measure_backlog_drain(redis_url: str, prefix: str, clients: int, limit_s: float) -> dict[str, float]:
    """After PostgreSQL returns: the outbox backlog then, and how long until it is back to steady state."""
    started = time.monotonic()
    backlog = await chaos.outbox_depth(redis_url, prefix)
    while time.monotonic() - started < limit_s:
        try:
            if await chaos.outbox_depth(redis_url, prefix) <= clients:
                return {"backlog_entries": backlog, "drain_s": round(time.monotonic() - started, 3)}
        except (RedisError, OSError):
            pass  # the schedule may be killing Redis meanwhile; keep measuring
        await asyncio.sleep(0.02)
    return {"backlog_entries": backlog, "drain_s": -1.0}


async def run(seconds: float, clients: int, threads: int) -> dict[str, Any]:
    """Run the soak; return the report."""
    workdir = tempfile.mkdtemp(prefix="chatmem-soak-")
    redis, pg = RedisProcess(appendonly=True), PostgresProcess()
    redis.start()
    pg.start()
    prefix = f"soak{uuid.uuid4().hex[:6]}"
    server = ServerProcess(
        {
            "DATABASE__URL": pg.url,
            "REDIS__URL": redis.url,
            "REDIS__KEY_PREFIX": prefix,
            "MEMORY__WRITE_MODE": "write_behind",
            "OUTBOX__CLAIM_IDLE_MS": "2000",
            "OUTBOX__CLAIM_INTERVAL_S": "1",
            "LOG_LEVEL": "WARNING",
        },
        workdir,
    )
    server.start()
    events: list[dict[str, Any]] = []
    drain: dict[str, float] = {}
    try:
        await chaos.wait_serving(server.target)
        workspace = f"soak-{uuid.uuid4().hex[:6]}"
        names = [f"t{i}" for i in range(threads)]
        recorder = chaos.Recorder()
        stop = asyncio.Event()
        load = [
            asyncio.ensure_future(chaos.appender(server.target, workspace, c, names, recorder, stop, deadline_s=2.0))
            for c in range(clients)
        ]

        measuring: list[asyncio.Task[None]] = []

        async def measure() -> None:
            drain.update(await measure_backlog_drain(redis.url, prefix, clients, 60))

        async def pg_back() -> None:
            await asyncio.to_thread(pg.start)
            measuring.append(asyncio.ensure_future(measure()))  # in the background: the schedule goes on

        def restart_server() -> None:
            server.start()

        # Spaced so that each fault's recovery (and the outbox drain after PostgreSQL) stands alone.
        schedule: list[tuple[float, str, Callable[[], Any]]] = [
            (3, "kill -9 postgres", pg.kill),
            (7, "start postgres", pg_back),
            (18, "kill -9 redis", redis.kill),
            (20, "start redis", redis.start),
            (24, "SIGSTOP redis", redis.pause),
            (28, "SIGCONT redis", redis.resume),
            (32, "kill -9 server", server.kill),
            (33, "start server", restart_server),
        ]
        started = time.monotonic()
        for at, name, action in schedule:
            await asyncio.sleep(max(0.0, started + at - time.monotonic()))
            acked_before = len(recorder.acks)
            if asyncio.iscoroutinefunction(action):
                await action()
            else:
                await asyncio.to_thread(action)
            events.append({"t_s": round(time.monotonic() - started, 2), "event": name, "acked_so_far": acked_before})
        await asyncio.sleep(max(0.0, started + seconds - time.monotonic()))
        events.append(
            {"t_s": round(time.monotonic() - started, 2), "event": "stop load", "acked_so_far": len(recorder.acks)}
        )
        stop.set()
        await asyncio.wait_for(asyncio.gather(*load, *measuring), 120)
        elapsed = time.monotonic() - started
        final_drain_s = await chaos.wait_drained(redis.url, prefix, 120)
        report = chaos.check(recorder, await chaos.pg_histories(pg.url, workspace))
        return {
            "benchmark": "soak",
            "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "command": "python -m bench.soak " + " ".join(sys.argv[1:]),
            "clients": clients,
            "threads": threads,
            "load_seconds": round(elapsed, 1),
            "events": events,
            "acknowledged": report.acked,
            "lost": len(report.missing),
            "duplicates": len(report.duplicates),
            "seq_mismatches": len(report.seq_mismatches),
            "order_violations": len(report.order_violations),
            "stored_but_unacknowledged": report.stored_unacked,
            "queued_acks": sum(1 for a in recorder.acks if a.durability == 2),
            "persisted_acks": sum(1 for a in recorder.acks if a.durability == 1),
            "retries": recorder.retries,
            "errors_seen_by_clients": dict(recorder.errors),
            "slowest_call_s": round(recorder.slowest_call_s, 3),
            "outbox_after_postgres_returned": drain,
            "final_drain_s": round(final_drain_s, 3),
            "examples": (report.missing + report.duplicates + report.seq_mismatches + report.order_violations)[:10],
        }
    finally:
        if server.proc is not None:
            server.stop()
        redis.close()
        pg.close()


def main(argv: list[str] | None = None) -> int:
    """Run the soak and print the report; exit 1 if anything acknowledged was lost or misordered."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--threads", type=int, default=24)
    args = parser.parse_args(argv)
    result = asyncio.run(run(max(args.seconds, 30.0), args.clients, args.threads))
    out = ROOT / "bench" / "results" / f"soak-{datetime.datetime.now(datetime.UTC):%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for key in ("load_seconds", "clients", "acknowledged", "lost", "duplicates", "seq_mismatches", "order_violations",
                "queued_acks", "persisted_acks", "retries", "slowest_call_s", "outbox_after_postgres_returned",
                "final_drain_s", "errors_seen_by_clients"):  # fmt: skip
        print(f"{key:32} {result[key]}")
    for event in result["events"]:
        print(f"  t={event['t_s']:6.2f}s  {event['event']:18} acked so far: {event['acked_so_far']}")
    print(f"results: {out}")
    bad = result["lost"] or result["duplicates"] or result["seq_mismatches"] or result["order_violations"]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
