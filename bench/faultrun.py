"""Fault run for the README: two server replicas over a Redis Cluster (3 masters, 1 replica each) and
PostgreSQL (fsync on), under write_behind load while masters, server replicas and the whole cluster fail.

Run: ``.venv/bin/python -m bench.faultrun [--seconds 60] [--clients 16]``. Everything runs on 127.0.0.1.
Schedule (fractions of --seconds):

- 0.10 kill -9 a master; its replica takes over; 0.30 the old master restarts and rejoins;
- 0.45 kill -9 server replica A; 0.52 a new A on the same port;
- 0.65 freeze every cluster node (SIGSTOP): Redis is down cluster-wide; kill -9 server replica B and start a
  new B while Redis is down; 0.78 the cluster resumes.

At the end the outbox drains and the checker (devtools/chaos.py) holds PostgreSQL to every acknowledgement.
Prints acked, lost, duplicated, order violations, stale non-degraded windows (each thread's GetHistory
from each replica, when it says degraded=false, against PostgreSQL's tail), INTERNAL calls and the load
average. Exits 1 if any promise broke.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from typing import Any

import grpc

from chatmem.v1 import thread_memory_service_pb2 as pb
from chatmem.v1 import thread_memory_service_pb2_grpc as pb_grpc
from devtools import chaos
from devtools.cluster import RedisCluster
from devtools.faultkit import cluster_wait_drained, run_load, server_env, start_server, threads_by_master
from devtools.postgres import PostgresProcess
from devtools.server import ServerProcess

WINDOW = 50


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


async def stale_windows(targets: list[str], workspace: str, threads: list[str], pg_url: str) -> tuple[int, list[str]]:
    """Count (thread, replica) GetHistory answers that say degraded=false but differ from PostgreSQL's tail."""
    stored = await chaos.pg_histories(pg_url, workspace)
    stale, examples = 0, []
    for target in targets:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = pb_grpc.ThreadMemoryServiceStub(channel)
            for thread in threads:
                try:
                    got = await stub.GetHistory(
                        pb.GetHistoryRequest(workspace_id=workspace, thread_id=thread), timeout=5
                    )
                except grpc.aio.AioRpcError as exc:
                    examples.append(f"GetHistory {target} {thread}: {exc.code().name}")
                    continue
                if got.serving.degraded:
                    continue
                served = [(m.seq, m.content) for m in got.messages]
                if served != stored.get(thread, [])[-WINDOW:]:
                    stale += 1
                    if len(examples) < 10:
                        examples.append(
                            f"{target} {thread}: served last {served[-2:]} store {stored.get(thread, [])[-2:]}"
                        )
    return stale, examples


async def run(seconds: float, clients: int) -> int:
    cwd = tempfile.mkdtemp(prefix="chatmem-faultrun-")
    cluster = RedisCluster(replicas=1, appendonly=True)
    pg = PostgresProcess(extra_conf={"fsync": "on", "full_page_writes": "on"})
    servers: list[ServerProcess] = []
    notes: list[str] = []
    problems: list[str] = []  # broken promises found by the schedule itself
    try:
        log("starting PostgreSQL and a Redis Cluster of 3 masters + 3 replicas")
        pg.start()
        cluster.start()
        prefix, ws = f"fr{uuid.uuid4().hex[:6]}", f"ws-{uuid.uuid4().hex[:8]}"
        env = server_env(redis_url=cluster.url, pg_url=pg.url, prefix=prefix, cluster=True)
        a = await start_server(env, cwd)
        b = await start_server(env, cwd)
        servers += [a, b]
        threads = [t for ts in threads_by_master(cluster, prefix, ws, 8).values() for t in ts]
        log(f"servers {a.target} and {b.target}; {clients} clients over {len(threads)} threads for {seconds:.0f}s")

        async def kill_master() -> None:
            victim = await asyncio.to_thread(cluster.kill_master, 0)
            log(f"kill -9 master {victim.port}")
            try:
                promoted = await asyncio.to_thread(cluster.wait_failover, victim, 30)
                log(f"failover: {promoted.port} serves its slots")
            except TimeoutError as exc:
                notes.append(f"failover: {exc}")
            state["victim"] = victim

        async def restart_master() -> None:
            victim = state.get("victim")
            if victim is not None:
                await asyncio.to_thread(cluster.restart_node, victim, 30)
                log(f"old master {victim.port} rejoined")

        async def kill_server_a() -> None:
            a.kill()
            log(f"kill -9 server replica A {a.target}")

        async def restart_server_a() -> None:
            a.start()
            try:
                await chaos.wait_serving(a.target, 20)
                log("server replica A restarted")
            except (TimeoutError, grpc.aio.AioRpcError, RuntimeError) as exc:
                problems.append(f"server A did not come back: {exc!r}")

        async def freeze_redis_and_replace_b() -> None:
            for n in cluster.live_nodes():
                n.pause()
            log("every cluster node frozen (SIGSTOP)")
            b.kill()
            log(f"kill -9 server replica B {b.target}; starting a new B while Redis is down")
            b.start()
            try:
                await chaos.wait_serving(b.target, 10)
                log("new B serving while Redis is down")
            except (TimeoutError, grpc.aio.AioRpcError, RuntimeError) as exc:
                exited = b.proc is not None and b.proc.poll() is not None
                last = [line for line in b.log().splitlines() if line.strip()][-1:]
                problems.append(
                    f"a server started while Redis was down did not serve (exited={exited}): {exc.__class__.__name__}"
                    f" {last}"
                )
                log("new B is not serving while Redis is down")

        async def resume_redis() -> None:
            for n in cluster.live_nodes():
                n.resume()
            log("cluster resumed")
            try:
                await asyncio.to_thread(cluster.wait_ready, 30)
            except TimeoutError as exc:
                notes.append(f"cluster not ready after the freeze: {exc}")
            if b.proc is None or b.proc.poll() is not None:
                log("B exited: starting it again now that Redis is back")
                b.start()
            try:
                await chaos.wait_serving(b.target, 20)
            except (TimeoutError, grpc.aio.AioRpcError, RuntimeError) as exc:
                problems.append(f"server B not serving after Redis returned: {exc!r}")

        state: dict[str, Any] = {}
        schedule = [
            (0.10 * seconds, kill_master),
            (0.30 * seconds, restart_master),
            (0.45 * seconds, kill_server_a),
            (0.52 * seconds, restart_server_a),
            (0.65 * seconds, freeze_redis_and_replace_b),
            (0.78 * seconds, resume_redis),
        ]
        recorder, calls = await run_load([a.target, b.target], ws, threads, clients, seconds, schedule)
        log(f"load done: {len(recorder.acks)} acks; draining")
        try:
            drain_s = await cluster_wait_drained(cluster, prefix, 90)
        except TimeoutError as exc:
            notes.append(str(exc))
            drain_s = -1.0
        report = chaos.check(recorder, await chaos.pg_histories(pg.url, ws))
        stale, examples = await stale_windows([a.target, b.target], ws, threads, pg.url)
        load = os.getloadavg()
        print()
        print(f"acked                     {report.acked}")
        print(f"unacknowledged (gave up)  {len(recorder.unacked)}")
        print(f"lost                      {len(report.missing)}")
        print(f"duplicated                {len(report.duplicates)}")
        print(f"seq mismatches            {len(report.seq_mismatches)}")
        print(f"order violations          {len(report.order_violations)}")
        print(f"stale non-degraded windows {stale}")
        print(f"INTERNAL/UNKNOWN calls    {calls.broken}")
        print(f"call outcomes             {dict(calls.codes)}")
        print(f"drain after load          {drain_s:.2f}s")
        print(f"loadavg (1/5/15 min)      {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        for line in (report.missing + report.duplicates + report.seq_mismatches + report.order_violations)[:10]:
            print(f"  checker: {line}")
        for line in examples[:10] + calls.internal[:5] + notes:
            print(f"  note: {line}")
        for line in problems:
            print(f"  BROKEN: {line}")
        broken = not report.ok or stale or calls.broken or report.acked == 0 or drain_s < 0 or problems
        print("VERDICT:", "promises broken" if broken else "every promise held")
        return 1 if broken else 0
    finally:
        for s in servers:
            s.kill()
        for n in cluster.nodes:
            if n.running:
                n.resume()
        cluster.close()
        pg.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faultrun", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="load duration (the schedule scales with it)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent appenders over both replicas")
    args = parser.parse_args(argv)
    return asyncio.run(run(args.seconds, args.clients))


if __name__ == "__main__":
    sys.exit(main())
