"""Shared parts of the restart, replica and Redis Cluster fault tests (issue #11) and of bench/faultrun.py.

Server processes configured by env, appenders that spread over several server replicas (a retry goes to
the next replica with the same request id), cluster-aware outbox depth, and thread ids picked by the
cluster master that holds their slot. Every loop is bounded in count and in time; all traffic is 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
import redis

from chatmem.v1 import preferences_service_pb2 as ppb
from chatmem.v1 import preferences_service_pb2_grpc as ppb_grpc
from chatmem.v1 import resources_pb2 as r
from chatmem.v1 import thread_memory_service_pb2 as pb
from chatmem.v1 import thread_memory_service_pb2_grpc as pb_grpc
from devtools import chaos
from devtools.cluster import RedisCluster
from devtools.server import ServerProcess
from server.storage.redis.keys import KeySpace, bucket_of

# Codes an appender retries (on the next replica). INTERNAL and UNKNOWN are broken promises, counted.
RETRYABLE = chaos.RETRYABLE


def server_env(
    *,
    redis_url: str,
    pg_url: str,
    prefix: str,
    mode: str = "write_behind",
    cluster: bool = False,
    **extra: str,
) -> dict[str, str]:
    """Return the env of a chatmem server process with quick probes, flushes and claims (for the fault tests)."""
    env = {
        "DATABASE__URL": pg_url,
        "REDIS__URL": redis_url,
        "REDIS__KEY_PREFIX": prefix,
        "REDIS__PROBE_INTERVAL_S": "0.2",
        "MEMORY__WRITE_MODE": mode,
        "OUTBOX__BLOCK_MS": "50",
        "OUTBOX__CLAIM_IDLE_MS": "1500",
        "OUTBOX__CLAIM_INTERVAL_S": "0.5",
        "LOG_LEVEL": "WARNING",
    }
    if cluster:
        env["REDIS__CLUSTER"] = "true"
    env.update(extra)
    return env


async def start_server(env: dict[str, str], cwd: str, timeout_s: float = 30.0) -> ServerProcess:
    """Start a server process and wait until it reports SERVING."""
    server = ServerProcess(env, cwd)
    server.start()
    try:
        await chaos.wait_serving(server.target, timeout_s)
    except Exception as exc:
        server.kill()
        raise RuntimeError(f"server did not start: {exc}\n{server.log()[-3000:]}") from exc
    return server


def msg(content: str) -> r.MessageInput:
    """One user message."""
    return r.MessageInput(role=r.ROLE_USER, content=content)


@dataclass
class Calls:
    """Every call's outcome by status code name (OK included), and the worst examples of broken ones."""

    codes: Counter[str] = field(default_factory=Counter)
    internal: list[str] = field(default_factory=list)

    def note(self, what: str, exc: grpc.aio.AioRpcError | None) -> None:
        """Count one outcome; keep the text of INTERNAL and UNKNOWN ones."""
        code = "OK" if exc is None else exc.code().name
        self.codes[code] += 1
        broken = exc is not None and exc.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
        if broken and len(self.internal) < 20:
            assert exc is not None
            self.internal.append(f"{what}: {code} {exc.details()}")

    @property
    def broken(self) -> int:
        """Calls that ended INTERNAL or UNKNOWN."""
        return self.codes["INTERNAL"] + self.codes["UNKNOWN"]


async def appender(
    targets: Sequence[str],
    workspace: str,
    client_id: int,
    threads: Sequence[str],
    recorder: chaos.Recorder,
    calls: Calls,
    stop: asyncio.Event,
    *,
    deadline_s: float = 2.0,
    max_ops: int = 100_000,
    max_attempts: int = 400,
    give_up_s: float = 60.0,
) -> None:
    """Append one message at a time until ``stop``; each retry (same request id) goes to the next replica.

    Any error (INTERNAL too) is retried, so the checker still sees every acknowledgement; INTERNAL and
    UNKNOWN are counted in ``calls`` as broken promises.
    """
    channels = [grpc.aio.insecure_channel(t) for t in targets]
    stubs = [pb_grpc.ThreadMemoryServiceStub(c) for c in channels]
    try:
        for i in range(max_ops):
            if stop.is_set():
                return
            thread = threads[(client_id * 7 + i) % len(threads)]
            content = f"c{client_id}-{i}"
            request = pb.AppendMessagesRequest(
                workspace_id=workspace, thread_id=thread, request_id=f"r{client_id}-{i}", messages=[msg(content)]
            )
            sent = time.monotonic()
            pick = client_id + i
            acked = False
            for _ in range(max_attempts):
                if time.monotonic() - sent > give_up_s:
                    break
                recorder.attempts += 1
                started = time.monotonic()
                try:
                    resp = await stubs[pick % len(stubs)].AppendMessages(request, timeout=deadline_s)
                except grpc.aio.AioRpcError as exc:
                    recorder.slowest_call_s = max(recorder.slowest_call_s, time.monotonic() - started)
                    recorder.errors[exc.code().name] += 1
                    calls.note(f"AppendMessages {thread}", exc)
                    recorder.retries += 1
                    pick += 1
                    await asyncio.sleep(0.05)
                    continue
                calls.note("AppendMessages", None)
                recorder.slowest_call_s = max(recorder.slowest_call_s, time.monotonic() - started)
                recorder.acks.append(chaos.Ack(thread, content, resp.seqs[0], sent, time.monotonic(), resp.durability))
                acked = True
                break
            if not acked:
                recorder.unacked.add(content)
    finally:
        for c in channels:
            await c.close()


async def run_load(
    targets: Sequence[str],
    workspace: str,
    threads: Sequence[str],
    clients: int,
    seconds: float,
    during: Sequence[tuple[float, object]] = (),
    *,
    deadline_s: float = 2.0,
) -> tuple[chaos.Recorder, Calls]:
    """Run ``clients`` appenders for ``seconds``; each ``(at_s, action)`` runs on time (sync ones off the loop)."""
    recorder = chaos.Recorder()
    calls = Calls()
    stop = asyncio.Event()
    tasks = [
        asyncio.ensure_future(appender(targets, workspace, c, threads, recorder, calls, stop, deadline_s=deadline_s))
        for c in range(clients)
    ]
    started = time.monotonic()
    try:
        for at_s, action in during:
            await asyncio.sleep(max(0.0, started + at_s - time.monotonic()))
            if asyncio.iscoroutinefunction(action):
                await action()
            else:
                await asyncio.to_thread(action)  # type: ignore[arg-type]
        await asyncio.sleep(max(0.0, started + seconds - time.monotonic()))
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 120)
    return recorder, calls


# -- Redis Cluster -------------------------------------------------------------------------------------


def _scan_outboxes(node_port: int, prefix: str) -> int:
    client = redis.Redis(host="127.0.0.1", port=node_port, socket_timeout=2.0)
    try:
        total = 0
        for n, key in enumerate(client.scan_iter(match=f"{prefix}:*:outbox", count=1000)):
            if n > 10_000:
                raise RuntimeError("too many outbox keys")
            total += int(client.xlen(key))
        return total
    finally:
        client.close()


def _pending_consumers(node_port: int, prefix: str) -> Counter[str]:
    client = redis.Redis(host="127.0.0.1", port=node_port, socket_timeout=2.0, decode_responses=True)
    try:
        owned: Counter[str] = Counter()
        for n, key in enumerate(client.scan_iter(match=f"{prefix}:*:outbox", count=1000)):
            if n > 10_000:
                raise RuntimeError("too many outbox keys")
            summary = client.xpending(key, "chatmem-flusher")
            for c in summary.get("consumers") or []:
                owned[c["name"]] += int(c["pending"])
        return owned
    finally:
        client.close()


def cluster_pending_by_consumer(cluster: RedisCluster, prefix: str) -> Counter[str]:
    """Outbox entries read but not yet acknowledged, per flusher consumer, over every master."""
    total: Counter[str] = Counter()
    for m in cluster.masters():
        total.update(_pending_consumers(m.port, prefix))
    return total


def cluster_outbox_depths(cluster: RedisCluster, prefix: str) -> dict[int, int]:
    """Entries in every outbox stream, per master (by port), read from each master itself."""
    return {m.port: _scan_outboxes(m.port, prefix) for m in cluster.masters()}


async def cluster_wait_drained(cluster: RedisCluster, prefix: str, timeout_s: float) -> float:
    """Wait until every master's outbox streams are empty; return the seconds it took."""
    started = time.monotonic()
    last: dict[int, int] | str = {}
    while time.monotonic() - started < timeout_s:
        try:
            last = await asyncio.to_thread(cluster_outbox_depths, cluster, prefix)
            if not any(last.values()):
                return time.monotonic() - started
        except (redis.RedisError, OSError, LookupError) as exc:
            last = repr(exc)
        await asyncio.sleep(0.1)
    raise TimeoutError(f"cluster outbox not drained after {timeout_s}s: {last}")


def thread_slot(cluster: RedisCluster, prefix: str, workspace: str, thread: str) -> int:
    """Return the cluster slot of a thread's keys (its bucket's hash tag)."""
    return cluster.key_slot(KeySpace(prefix).thread(workspace, thread).meta)


def threads_by_master(
    cluster: RedisCluster, prefix: str, workspace: str, per_master: int, stem: str = "t"
) -> dict[int, list[str]]:
    """Pick ``per_master`` thread ids for every master (by port), by the slot of their bucket's hash tag."""
    masters = {m.port: m for m in cluster.masters()}
    slot_of_bucket: dict[int, int] = {}
    out: dict[int, list[str]] = {port: [] for port in masters}
    for i in range(20 * per_master * len(masters)):
        thread = f"{stem}{i}"
        b = bucket_of(workspace, thread)
        if b not in slot_of_bucket:
            slot_of_bucket[b] = thread_slot(cluster, prefix, workspace, thread)
        port = cluster.master_for_slot(slot_of_bucket[b]).port
        if len(out[port]) < per_master:
            out[port].append(thread)
        if all(len(v) == per_master for v in out.values()):
            return out
    raise AssertionError(f"could not spread threads over the masters: {out}")


# -- probes --------------------------------------------------------------------------------------------


async def append_once(
    target: str, workspace: str, thread: str, content: str, request_id: str = "", timeout_s: float = 5.0
) -> pb.AppendMessagesResponse:
    """Append one message through one server."""
    async with grpc.aio.insecure_channel(target) as channel:
        req = pb.AppendMessagesRequest(
            workspace_id=workspace, thread_id=thread, request_id=request_id, messages=[msg(content)]
        )
        out: pb.AppendMessagesResponse = await pb_grpc.ThreadMemoryServiceStub(channel).AppendMessages(
            req, timeout=timeout_s
        )
        return out


async def append_retrying(
    target: str, workspace: str, thread: str, content: str, request_id: str = "", attempts: int = 60
) -> pb.AppendMessagesResponse:
    """Append one message, retried with the same request id on UNAVAILABLE or DEADLINE_EXCEEDED."""
    last: Exception | None = None
    for _ in range(attempts):
        try:
            return await append_once(target, workspace, thread, content, request_id or f"ar-{content}")
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in RETRYABLE:
                raise
            last = exc
            await asyncio.sleep(0.1)
    raise AssertionError(f"append of {content} to {thread} never acknowledged: {last}")


async def history(target: str, workspace: str, thread: str, limit: int = 0) -> pb.GetHistoryResponse:
    """Call GetHistory through one server."""
    async with grpc.aio.insecure_channel(target) as channel:
        req = pb.GetHistoryRequest(workspace_id=workspace, thread_id=thread, limit=limit)
        got: pb.GetHistoryResponse = await pb_grpc.ThreadMemoryServiceStub(channel).GetHistory(req, timeout=5)
        return got


async def set_prefs(target: str, workspace: str, user: str, values: dict[str, str]) -> ppb.SetPreferencesResponse:
    """Call SetPreferences through one server."""
    async with grpc.aio.insecure_channel(target) as channel:
        req = ppb.SetPreferencesRequest(workspace_id=workspace, user_id=user, preferences=values)
        done: ppb.SetPreferencesResponse = await ppb_grpc.PreferencesServiceStub(channel).SetPreferences(req, timeout=5)
        return done


async def get_prefs(target: str, workspace: str, user: str) -> dict[str, str]:
    """GetPreferences through one server."""
    async with grpc.aio.insecure_channel(target) as channel:
        req = ppb.GetPreferencesRequest(workspace_id=workspace, user_id=user)
        got = await ppb_grpc.PreferencesServiceStub(channel).GetPreferences(req, timeout=5)
        return {p.key: p.value for p in got.preferences}


def seqs_of(resp: pb.GetHistoryResponse) -> list[int]:
    """Return the seqs of a history response, in the order served."""
    return [m.seq for m in resp.messages]


def report_problems(report: chaos.Report) -> list[str]:
    """Return the checker's findings as lines (empty when every promise held)."""
    if report.ok:
        return []
    found = report.missing + report.duplicates + report.seq_mismatches + report.order_violations
    return [report.summary(), *found[:20]]
