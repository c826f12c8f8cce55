"""Issue #11, case 2: the write_behind promises on a real Redis Cluster (REDIS__CLUSTER=true), with two
server replicas (each its own process, same key prefix) and PostgreSQL.

a. a healthy 3-master cluster: every ack in PostgreSQL exactly once in seq order, exact windows, drained;
b. a server replica killed with entries pending in its consumer: the other one claims them (XAUTOCLAIM);
c. a master killed under load, with a replica that takes over, and on a cluster without replicas where it
   comes back 10 s later: no INTERNAL, nothing lost, duplicated or reordered, request-id retries on the
   other replica replay the first result, preferences are not stale, and while a master is down only the
   threads on its slots are degraded (DESIGN.md §3).
"""

from __future__ import annotations

import asyncio
import pathlib
import re
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator

import grpc
import pytest

from chatmem.v1 import resources_pb2 as r
from devtools import chaos
from devtools.cluster import RedisCluster
from devtools.faultkit import (
    append_retrying,
    cluster_outbox_depths,
    cluster_pending_by_consumer,
    cluster_wait_drained,
    get_prefs,
    history,
    report_problems,
    run_load,
    server_env,
    set_prefs,
    start_server,
    threads_by_master,
)
from devtools.postgres import PostgresProcess
from devtools.server import ServerProcess

pytestmark = pytest.mark.integration

CLIENTS = 16


@pytest.fixture(scope="module")
def module_pg() -> Iterator[PostgresProcess]:
    """A PostgreSQL for this module's tests (each uses its own workspace)."""
    pg = PostgresProcess()
    pg.start()
    yield pg
    pg.close()


@pytest.fixture
def own_cluster() -> Iterator[RedisCluster]:
    """3 masters, no replicas, AOF on (a restarted master keeps its outbox), cluster-require-full-coverage no."""
    cluster = RedisCluster(appendonly=True, require_full_coverage=False)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


class Pair:
    """Two server replicas (A and B) on one cluster, one PostgreSQL and one key prefix."""

    def __init__(self, a: ServerProcess, b: ServerProcess, prefix: str, workspace: str) -> None:
        self.a, self.b, self.prefix, self.workspace = a, b, prefix, workspace

    @property
    def targets(self) -> list[str]:
        return [self.a.target, self.b.target]

    def close(self) -> None:
        self.a.kill()
        self.b.kill()


async def start_pair(cluster: RedisCluster, pg: PostgresProcess, cwd: pathlib.Path, **extra: str) -> Pair:
    prefix, ws = f"cm{uuid.uuid4().hex[:6]}", f"ws-{uuid.uuid4().hex[:8]}"
    env = server_env(redis_url=cluster.url, pg_url=pg.url, prefix=prefix, cluster=True, **extra)
    a = await start_server(env, str(cwd))
    try:
        b = await start_server(env, str(cwd))
    except Exception:
        a.kill()
        raise
    return Pair(a, b, prefix, ws)


async def seed(pair: Pair, threads: list[str]) -> None:
    """Create every thread once (a new thread needs the store once for its counter)."""
    for t in threads:
        await append_retrying(pair.a.target, pair.workspace, t, f"seed-{t}")


async def verify(cluster: RedisCluster, pg: PostgresProcess, pair: Pair, recorder: chaos.Recorder) -> list[str]:
    """Drain every master's outbox, then hold PostgreSQL to the acknowledgements; return the problems."""
    problems: list[str] = []
    try:
        await cluster_wait_drained(cluster, pair.prefix, 60)
    except TimeoutError as exc:
        problems.append(str(exc))
    problems += report_problems(chaos.check(recorder, await chaos.pg_histories(pg.url, pair.workspace)))
    if len(recorder.acks) < 50:
        problems.append(f"only {len(recorder.acks)} appends acknowledged: the load did not run")
    return problems


async def test_healthy_cluster_write_behind_promises(
    redis_cluster: RedisCluster, module_pg: PostgresProcess, tmp_path: pathlib.Path
) -> None:
    pair = await start_pair(redis_cluster, module_pg, tmp_path)
    try:
        spread = threads_by_master(redis_cluster, pair.prefix, pair.workspace, 8)
        threads = [t for ts in spread.values() for t in ts]
        recorder, calls = await run_load(pair.targets, pair.workspace, threads, CLIENTS, 4.0)
        problems = await verify(redis_cluster, module_pg, pair, recorder)
        if calls.broken:
            problems.append(f"INTERNAL/UNKNOWN calls: {calls.codes} {calls.internal[:5]}")
        not_queued = [a for a in recorder.acks if a.durability != r.DURABILITY_QUEUED]
        if not_queued:
            why = [
                line for s in (pair.a, pair.b) for line in s.log().splitlines() if "WARNING" in line or "ERROR" in line
            ]
            problems.append(f"{len(not_queued)} acks not QUEUED on a healthy cluster, e.g. {not_queued[0]}; {why[:6]}")
        depths = await asyncio.to_thread(cluster_outbox_depths, redis_cluster, pair.prefix)
        if any(depths.values()):
            problems.append(f"outbox not drained on every master: {depths}")
        for target in pair.targets:
            wrong = await chaos.windows_exact(target, pair.workspace, threads, 50)
            if wrong:
                problems.append(f"inexact windows through {target}: {wrong}")
        print(f"healthy cluster: {len(recorder.acks)} acks, calls {dict(calls.codes)}")
        assert not problems, "\n".join(problems)
    finally:
        pair.close()


async def test_killed_server_replica_pending_entries_are_claimed_by_the_other(
    redis_cluster: RedisCluster, own_pg: PostgresProcess, tmp_path: pathlib.Path
) -> None:
    pair = await start_pair(redis_cluster, own_pg, tmp_path, LOG_LEVEL="INFO")  # INFO: the claim is logged
    try:
        spread = threads_by_master(redis_cluster, pair.prefix, pair.workspace, 4)
        threads = [t for ts in spread.values() for t in ts]
        await seed(pair, threads)

        owned_by_a: list[int] = []

        def freeze_store_then_kill_a() -> None:
            own_pg.pause()  # the flushers cannot commit: entries stay pending in their consumers
            try:
                # A's consumer is named after its host and pid: wait (bounded) until it holds entries.
                assert pair.a.proc is not None
                mine = f"{socket.gethostname()}-{pair.a.proc.pid}-"
                deadline = time.monotonic() + 5.0
                while time.monotonic() < deadline:
                    owned = cluster_pending_by_consumer(redis_cluster, pair.prefix)
                    held = sum(n for name, n in owned.items() if name.startswith(mine))
                    if held:
                        owned_by_a.append(held)
                        break
                    time.sleep(0.05)
                pair.a.kill()
            finally:
                own_pg.resume()

        recorder, calls = await run_load(
            pair.targets, pair.workspace, threads, CLIENTS, 4.0, [(1.0, freeze_store_then_kill_a)]
        )
        problems = await verify(redis_cluster, own_pg, pair, recorder)
        if calls.broken:
            problems.append(f"INTERNAL/UNKNOWN calls: {calls.codes} {calls.internal[:5]}")
        claims = [line for line in pair.b.log().splitlines() if "claimed" in line]
        if not owned_by_a:
            problems.append("A held no pending outbox entries when it was killed: nothing to claim was set up")
        elif not claims:
            problems.append("B never claimed A's pending outbox entries (no 'claimed' line in its log)")
        print(f"replica kill: {len(recorder.acks)} acks, calls {dict(calls.codes)}, B: {claims[:3]}")
        assert not problems, "\n".join(problems)
    finally:
        pair.close()


class Probes:
    """Request-id retries across replicas, preferences across replicas, and what each found wrong."""

    def __init__(self, pair: Pair, thread: str) -> None:
        self.pair = pair
        self.thread = thread
        self.problems: list[str] = []
        self.prefs_acked: str | None = None

    async def retry_on_other_replica(self, label: str) -> None:
        """Append with request id X through A, then the same request through B: same seqs, replayed."""
        p, rid = self.pair, f"probe-{label}-{uuid.uuid4().hex[:6]}"
        try:
            first = await append_retrying(p.a.target, p.workspace, self.thread, f"probe-{label}", rid)
            again = await append_retrying(p.b.target, p.workspace, self.thread, f"probe-{label}", rid)
        except (AssertionError, grpc.aio.AioRpcError) as exc:
            self.problems.append(f"retry probe {label}: {exc}")
            return
        if list(again.seqs) != list(first.seqs) or not again.replayed:
            self.problems.append(
                f"retry probe {label}: A acked seqs {list(first.seqs)}, the retry on B got {list(again.seqs)} "
                f"replayed={again.replayed}"
            )

    async def set_pref(self, value: str) -> None:
        """SetPreferences through A (retried a bounded number of times); remember the acknowledged value."""
        for _ in range(30):
            try:
                await set_prefs(self.pair.a.target, self.pair.workspace, "u1", {"lang": value})
                self.prefs_acked = value
                return
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in chaos.RETRYABLE:
                    self.problems.append(f"SetPreferences {value}: {exc.code().name} {exc.details()}")
                    return
                await asyncio.sleep(0.1)

    async def read_pref_on_b(self, when: str) -> None:
        """GetPreferences through B must return the last value acknowledged through A."""
        try:
            got = await get_prefs(self.pair.b.target, self.pair.workspace, "u1")
        except grpc.aio.AioRpcError as exc:
            self.problems.append(f"GetPreferences on B {when}: {exc.code().name} {exc.details()}")
            return
        if got.get("lang") != self.prefs_acked:
            self.problems.append(f"GetPreferences on B {when}: lang={got.get('lang')!r}, A acked {self.prefs_acked!r}")


async def master_outage(
    cluster: RedisCluster,
    pg: PostgresProcess,
    pair: Pair,
    outage: Callable[[], Awaitable[None]],
    spread: dict[int, list[str]],
    victim_port: int,
    seconds: float,
    probes: Probes,
) -> None:
    threads = [t for ts in spread.values() for t in ts]
    await seed(pair, threads)
    await probes.set_pref("before")
    await probes.read_pref_on_b("before the outage")  # B caches the old value
    await probes.retry_on_other_replica("before")
    recorder, calls = await run_load(pair.targets, pair.workspace, threads, CLIENTS, seconds, [(1.0, outage)])
    await probes.retry_on_other_replica("after")
    await probes.read_pref_on_b("after recovery")
    problems = await verify(cluster, pg, pair, recorder)
    if calls.broken:
        problems.append(f"INTERNAL/UNKNOWN calls: {dict(calls.codes)}; e.g. {calls.internal[:5]}")
        for s in (pair.a, pair.b):
            errors = [line for line in s.log().splitlines() if re.match(r"[\w.]*(Error|Exception)\b", line)]
            problems += [f"  {s.target} log: {line[:300]}" for line in errors[-3:]]
    print(f"master outage: {len(recorder.acks)} acks, calls {dict(calls.codes)}, victim {victim_port}")
    assert not problems + probes.problems, "\n".join(problems + probes.problems)


async def test_master_failover_under_load(
    redis_cluster_replicas: RedisCluster, module_pg: PostgresProcess, tmp_path: pathlib.Path
) -> None:
    cluster = redis_cluster_replicas
    cluster.wait_ready()
    pair = await start_pair(cluster, module_pg, tmp_path)
    try:
        spread = threads_by_master(cluster, pair.prefix, pair.workspace, 4)
        victim = cluster.masters()[0]
        probes = Probes(pair, spread[victim.port][0])

        async def outage() -> None:
            await asyncio.to_thread(cluster.kill_master, 0)
            await asyncio.sleep(0.2)
            await probes.retry_on_other_replica("during")
            await probes.set_pref("during")
            await asyncio.to_thread(cluster.wait_failover, victim, 30)
            await probes.retry_on_other_replica("after-failover")
            await asyncio.to_thread(cluster.restart_node, victim, 30)
            await probes.retry_on_other_replica("after-rejoin")

        await master_outage(cluster, module_pg, pair, outage, spread, victim.port, 9.0, probes)
    finally:
        pair.close()


async def test_master_down_without_replica_degrades_only_its_threads(
    own_cluster: RedisCluster, module_pg: PostgresProcess, tmp_path: pathlib.Path
) -> None:
    cluster = own_cluster
    pair = await start_pair(cluster, module_pg, tmp_path)
    try:
        spread = threads_by_master(cluster, pair.prefix, pair.workspace, 4)
        victim = cluster.masters()[1]
        live_thread = next(ts[0] for port, ts in spread.items() if port != victim.port)
        dead_thread = spread[victim.port][0]
        probes = Probes(pair, dead_thread)
        seen: list[str] = []

        async def degradation() -> None:
            """While the master is down: its thread degraded, a live master's thread served normally."""
            live_ok = dead_degraded = False
            live_last = dead_last = ""
            deadline = time.monotonic() + 4.0
            for _ in range(40):
                if time.monotonic() > deadline or (live_ok and dead_degraded):
                    break
                for target in pair.targets:
                    try:
                        got = await history(target, pair.workspace, live_thread)
                        appended = await append_retrying(
                            target, pair.workspace, live_thread, f"lv-{uuid.uuid4().hex[:6]}", attempts=3
                        )
                        live_last = (
                            f"{target}: GetHistory tier={r.Tier.Name(got.serving.tier)} degraded={got.serving.degraded}"
                            f", append {r.Durability.Name(appended.durability)}"
                        )
                        live_ok = (
                            got.serving.tier == r.TIER_CACHE
                            and not got.serving.degraded
                            and appended.durability == r.DURABILITY_QUEUED
                        )
                    except (grpc.aio.AioRpcError, AssertionError) as exc:
                        live_last = f"{target}: {exc}"
                    try:
                        got = await history(target, pair.workspace, dead_thread)
                        dead_last = f"{target}: tier={r.Tier.Name(got.serving.tier)} degraded={got.serving.degraded}"
                        dead_degraded = got.serving.degraded
                    except grpc.aio.AioRpcError as exc:
                        dead_last = f"{target}: {exc.code().name} {exc.details()}"
                await asyncio.sleep(0.1)
            if not live_ok:
                seen.append(f"thread {live_thread} on a live master not served normally: {live_last}")
            if not dead_degraded:
                seen.append(f"thread {dead_thread} on the dead master not reported degraded: {dead_last}")

        async def outage() -> None:
            await asyncio.to_thread(cluster.kill_master, 1)
            await asyncio.sleep(0.5)
            await probes.retry_on_other_replica("during")
            await probes.set_pref("during")
            await degradation()
            await asyncio.sleep(max(0.0, 10.0 - 5.0))  # the master stays down about 10 s
            await asyncio.to_thread(cluster.restart_node, victim, 30)
            await probes.retry_on_other_replica("right-after")

        try:
            await master_outage(cluster, module_pg, pair, outage, spread, victim.port, 14.0, probes)
        except AssertionError as exc:
            raise AssertionError("\n".join([*seen, str(exc)])) from None
        assert not seen, "\n".join(seen)
    finally:
        pair.close()


async def test_server_started_while_the_cluster_is_down_serves_from_the_store(
    own_cluster: RedisCluster, module_pg: PostgresProcess, tmp_path: pathlib.Path
) -> None:
    """Redis down -> the store serves (DESIGN.md §3), also for a replica that starts while every node is frozen;
    once the cluster resumes, the replica uses it again (QUEUED) and serves the full history."""
    cluster = own_cluster
    prefix, ws = f"cm{uuid.uuid4().hex[:6]}", f"ws-{uuid.uuid4().hex[:8]}"
    env = server_env(redis_url=cluster.url, pg_url=module_pg.url, prefix=prefix, cluster=True)
    first = await start_server(env, str(tmp_path))
    acked = []
    try:
        for c in ["m1", "m2"]:
            acked.append(((await append_retrying(first.target, ws, "T", c)).seqs[0], c))
        await cluster_wait_drained(cluster, prefix, 20)
    finally:
        first.kill()
    for n in cluster.live_nodes():
        n.pause()
    server = ServerProcess(env, str(tmp_path))
    try:
        server.start()
        try:
            await chaos.wait_serving(server.target, 15)
            during = await append_retrying(server.target, ws, "T", "m3", attempts=30)
        except (grpc.aio.AioRpcError, AssertionError, RuntimeError, TimeoutError) as exc:
            exited = server.proc is not None and server.proc.poll() is not None
            lines = [line for line in server.log().splitlines() if line.strip()]
            raise AssertionError(
                f"a server started while the cluster is down does not serve (exited={exited}): "
                f"{exc.__class__.__name__}; log: {lines[-1:]}"
            ) from None
        finally:
            for n in cluster.live_nodes():
                n.resume()
        assert during.durability == r.DURABILITY_PERSISTED, during
        acked.append((during.seqs[0], "m3"))
        await asyncio.to_thread(cluster.wait_ready, 30)
        last = None
        for i in range(50):  # bounded: the server returns to the cache within a few probe intervals
            last = await append_retrying(server.target, ws, "T", f"n{i}")
            acked.append((last.seqs[0], f"n{i}"))
            if last.durability == r.DURABILITY_QUEUED:
                break
            await asyncio.sleep(0.1)
        assert last is not None and last.durability == r.DURABILITY_QUEUED, "the server never used the cluster again"
        got = await history(server.target, ws, "T")
        assert [(m.seq, m.content) for m in got.messages] == acked, (
            f"history {[(m.seq, m.content) for m in got.messages]} degraded={got.serving.degraded}; acked {acked}"
        )
    finally:
        server.kill()
