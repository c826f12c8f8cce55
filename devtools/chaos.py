"""Concurrent appenders that record every acknowledgement, and the checker that holds the stores to them.

Used by the fault tests and by bench/soak.py. Every loop is bounded in count and in time, and all
traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg
import grpc
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chatmem.v1 import resources_pb2 as r
from chatmem.v1 import thread_memory_service_pb2 as pb
from chatmem.v1 import thread_memory_service_pb2_grpc as pb_grpc
from server.storage.redis.keys import BUCKETS, KeySpace

RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}


@dataclass(frozen=True, slots=True)
class Ack:
    """One acknowledged append of one message."""

    thread: str
    content: str
    seq: int
    sent: float
    acked: float
    durability: int


@dataclass
class Recorder:
    """What the clients saw: acknowledgements, requests that never got one, and the slowest call."""

    acks: list[Ack] = field(default_factory=list)
    unacked: set[str] = field(default_factory=set)
    attempts: int = 0
    retries: int = 0
    slowest_call_s: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)


async def appender(
    target: str,
    workspace: str,
    client_id: int,
    threads: Sequence[str],
    recorder: Recorder,
    stop: asyncio.Event,
    *,
    deadline_s: float = 2.0,
    max_ops: int = 100_000,
    max_attempts: int = 200,
) -> None:
    """Append one message at a time until ``stop``, retrying each with its request id until acknowledged."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.ThreadMemoryServiceStub(channel)
        for i in range(max_ops):
            if stop.is_set():
                return
            thread = threads[(client_id * 7 + i) % len(threads)]
            content = f"c{client_id}-{i}"
            request = pb.AppendMessagesRequest(
                workspace_id=workspace,
                thread_id=thread,
                request_id=f"r{client_id}-{i}",
                messages=[r.MessageInput(role=r.ROLE_USER, content=content)],
            )
            sent = time.monotonic()
            for _ in range(max_attempts):
                recorder.attempts += 1
                started = time.monotonic()
                try:
                    resp = await stub.AppendMessages(request, timeout=deadline_s)
                except grpc.aio.AioRpcError as exc:
                    recorder.slowest_call_s = max(recorder.slowest_call_s, time.monotonic() - started)
                    recorder.errors[exc.code().name] += 1
                    if exc.code() not in RETRYABLE:
                        raise
                    recorder.retries += 1
                    await asyncio.sleep(0.05)
                    continue
                recorder.slowest_call_s = max(recorder.slowest_call_s, time.monotonic() - started)
                recorder.acks.append(Ack(thread, content, resp.seqs[0], sent, time.monotonic(), resp.durability))
                break
            else:
                recorder.unacked.add(content)


@dataclass
class Report:
    """The checker's verdict."""

    acked: int = 0
    stored: int = 0
    missing: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    seq_mismatches: list[str] = field(default_factory=list)
    order_violations: list[str] = field(default_factory=list)
    stored_unacked: int = 0

    @property
    def ok(self) -> bool:
        """True when nothing acknowledged is missing, duplicated, renumbered or out of order."""
        return not (self.missing or self.duplicates or self.seq_mismatches or self.order_violations)

    def summary(self) -> str:
        """One line for logs and notes."""
        return (
            f"acked={self.acked} stored={self.stored} missing={len(self.missing)} duplicates={len(self.duplicates)} "
            f"seq_mismatches={len(self.seq_mismatches)} order_violations={len(self.order_violations)} "
            f"stored_but_unacknowledged={self.stored_unacked}"
        )


def check(recorder: Recorder, histories: dict[str, list[tuple[int, str]]]) -> Report:
    """Compare the acknowledged appends with each thread's full stored history.

    Order: if B was sent after A was acknowledged (same thread), B's seq must be larger. Each
    acknowledged message must be stored exactly once, at the seq it was acknowledged with.
    """
    report = Report(acked=len(recorder.acks))
    acked_contents = {a.content for a in recorder.acks}
    by_thread: dict[str, list[Ack]] = defaultdict(list)
    for a in recorder.acks:
        by_thread[a.thread].append(a)
    for thread in set(by_thread) | set(histories):
        history = histories.get(thread, [])
        report.stored += len(history)
        seqs = [s for s, _ in history]
        if seqs != sorted(set(seqs)):
            report.duplicates.append(f"{thread}: seqs not unique and increasing")
        where: dict[str, list[int]] = defaultdict(list)
        for seq, content in history:
            where[content].append(seq)
        report.duplicates += [f"{thread}: {c} at {s}" for c, s in where.items() if len(s) > 1]
        report.stored_unacked += sum(1 for c in where if c not in acked_contents)
        acks = by_thread.get(thread, [])
        for a in acks:
            if a.content not in where:
                report.missing.append(f"{thread}: {a.content} (seq {a.seq})")
            elif a.seq not in where[a.content]:
                report.seq_mismatches.append(f"{thread}: {a.content} acked {a.seq}, stored {where[a.content]}")
        # Running maximum of acknowledged seqs, by acknowledgement time.
        by_ack = sorted(acks, key=lambda a: a.acked)
        ack_times = [a.acked for a in by_ack]
        running, best = [], 0
        for a in by_ack:
            best = max(best, a.seq)
            running.append(best)
        for b in acks:
            k = bisect.bisect_left(ack_times, b.sent)
            if k and running[k - 1] >= b.seq:
                report.order_violations.append(f"{thread}: {b.content} got {b.seq} after {running[k - 1]} was acked")
    return report


async def pg_histories(url: str, workspace: str) -> dict[str, list[tuple[int, str]]]:
    """Read every thread of a workspace straight from PostgreSQL."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT thread_id, seq, content FROM messages WHERE workspace_id = $1 ORDER BY thread_id, seq", workspace
        )
    finally:
        await conn.close()
    out: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for row in rows:
        out[row["thread_id"]].append((row["seq"], row["content"]))
    return out


async def outbox_depth(redis_url: str, prefix: str) -> int:
    """Entries in all outbox streams."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        keys = KeySpace(prefix)
        pipe = client.pipeline(transaction=False)
        for b in range(BUCKETS):
            pipe.xlen(keys.outbox(b))
        return sum(int(n) for n in await pipe.execute())
    finally:
        await client.aclose()


async def wait_drained(redis_url: str, prefix: str, timeout_s: float) -> float:
    """Wait until the outbox is empty; return the seconds it took."""
    started = time.monotonic()
    while await outbox_depth(redis_url, prefix):
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"outbox still holds {await outbox_depth(redis_url, prefix)} entries")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def wait_serving(target: str, timeout_s: float = 30.0) -> None:
    """Wait until the server at ``target`` reports SERVING."""
    async with grpc.aio.insecure_channel(target) as channel:
        resp = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=timeout_s, wait_for_ready=True
        )
        if resp.status != health_pb2.HealthCheckResponse.SERVING:
            raise RuntimeError(f"server at {target} is {resp.status}")


async def server_histories(target: str, workspace: str, threads: Sequence[str]) -> dict[str, list[tuple[int, str]]]:
    """Read every thread through the server's StreamHistory (after its queued messages are flushed)."""
    out: dict[str, list[tuple[int, str]]] = {}
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.ThreadMemoryServiceStub(channel)
        for thread in threads:
            req = pb.StreamHistoryRequest(workspace_id=workspace, thread_id=thread)
            out[thread] = [(m.seq, m.content) async for c in stub.StreamHistory(req, timeout=30) for m in c.messages]
    return out


async def windows_exact(target: str, workspace: str, threads: Sequence[str], window: int) -> list[str]:
    """Return the threads whose GetHistory window differs from the tail of their full history."""
    full = await server_histories(target, workspace, threads)
    wrong = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.ThreadMemoryServiceStub(channel)
        for thread in threads:
            got = await stub.GetHistory(pb.GetHistoryRequest(workspace_id=workspace, thread_id=thread), timeout=10)
            if [(m.seq, m.content) for m in got.messages] != full[thread][-window:]:
                wrong.append(thread)
    return wrong
