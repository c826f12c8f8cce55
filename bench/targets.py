"""The benchmark targets as seen from a load generator: how each one preloads and performs each operation.

Every target builds, for an operation and a worker, an async ``call(i, meter)`` that performs the operation
once and returns ``(latency_ns or None, anomaly tags)``. Untimed preparation inside a call (dropping the
cache key before a hydration) happens before the clock starts. Streams report their messages to the
meter as they arrive, so that a stream cut at the end of the measured window still counts what it read.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
import warnings
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg
import grpc
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.workload import APPEND, HYDRATE, READ, RPC, STREAM, ThreadSet, Workload, is_chat, worker_threads
from chatmem.v1 import resources_pb2
from chatmem.v1 import thread_memory_service_pb2 as pb
from chatmem.v1 import thread_memory_service_pb2_grpc as pb_grpc
from server.storage.codec import encode_message
from server.storage.models import Role, StoredMessage

CALL_TIMEOUT_S = 30.0
STREAM_TIMEOUT_S = 300.0
PRELOAD_CONCURRENCY = 8
EXECUTOR_THREADS = 64  # the load generator's default executor, which runs langchain-redis's sync calls
CHANNEL_OPTIONS = (("grpc.max_receive_message_length", 64 * 1024 * 1024),)
Tags = tuple[str, ...]
Call = Callable[[int, "Meter"], Awaitable[tuple[int | None, Tags]]]

# The schema of limit-postgres's own table: chatmem's messages table, column for column.
MESSAGES_DDL = """
CREATE TABLE IF NOT EXISTS messages (
    workspace_id text        NOT NULL,
    thread_id    text        NOT NULL,
    seq          bigint      NOT NULL,
    role         smallint    NOT NULL,
    content      text        NOT NULL,
    name         text        NOT NULL DEFAULT '',
    metadata     jsonb       NOT NULL DEFAULT '{}',
    create_time  timestamptz NOT NULL,
    encoded      bytea,
    PRIMARY KEY (workspace_id, thread_id, seq)
)
"""
LAST_N_SQL = (
    "SELECT seq, role, content, name, metadata::text AS metadata, create_time FROM messages "
    "WHERE workspace_id = $1 AND thread_id = $2 ORDER BY seq DESC LIMIT $3"
)
# The stream floor of issue 16: a raw keyset scan of the stored bytes, what StreamHistory sends.
PAGE_SQL = (
    "SELECT seq, encoded FROM messages WHERE workspace_id = $1 AND thread_id = $2 AND seq > $3 ORDER BY seq LIMIT $4"
)
APPEND_SQL = (
    "INSERT INTO messages (workspace_id, thread_id, seq, role, content, create_time) "
    "VALUES ($1, $2, $3, 1, $4, now()), ($1, $2, $5, 2, $6, now())"
)
# Messages generated inside PostgreSQL: seq 1..n alternating user (odd) and assistant (even), text number
# seq mod n of the content pool (the same texts the API preloads use), so a 100,000-message thread loads
# at PostgreSQL's own insert speed. The encoded column gets what chatmem's codec writes for the row (a
# serialised chatmem.v1.Message): the fields that do not vary with seq are encoded here in Python (see
# bulk_args), the seq's varint and the role in SQL; bulk_load checks a row against the codec.
_VARINT_SQL = (
    "CASE WHEN s < 128 THEN set_byte('\\x00'::bytea, 0, s::int) "
    "WHEN s < 16384 THEN set_byte(set_byte('\\x0000'::bytea, 0, (s % 128 + 128)::int), 1, (s / 128)::int) "
    "ELSE set_byte(set_byte(set_byte('\\x000000'::bytea, 0, (s % 128 + 128)::int), 1, "
    "((s / 128) % 128 + 128)::int), 2, (s / 16384)::int) END"
)
BULK_SQL = (
    "INSERT INTO messages (workspace_id, thread_id, seq, role, content, create_time, encoded) "
    "SELECT $1, $2, s, 2 - (s % 2), ($3::text[])[1 + (s % $4)], timestamptz 'epoch' + $7 * interval '1 microsecond', "
    f"$8::bytea || '\\x18'::bytea || {_VARINT_SQL} || '\\x20'::bytea || set_byte('\\x00'::bytea, 0, "
    "(2 - (s % 2))::int) || ($9::bytea[])[1 + (s % $4)] || $10::bytea "
    "FROM generate_series($5::bigint, $6::bigint) AS s"
)
MAX_BULK_SEQ = 2**21 - 1  # the varint above has at most three bytes


def bulk_args(workspace: str, thread: str, contents: Sequence[str], first: int, last: int) -> tuple[Any, ...]:
    """The arguments of BULK_SQL for messages ``first``..``last`` of a thread, created now."""
    if last > MAX_BULK_SEQ:
        raise ValueError(f"bulk threads hold at most {MAX_BULK_SEQ} messages")
    created_us = time.time_ns() // 1000 // 1_000_000 * 1_000_000  # whole seconds: a fixed-size timestamp
    head = resources_pb2.Message(workspace_id=workspace, thread_id=thread).SerializeToString()
    bodies = [resources_pb2.Message(content=c).SerializeToString() for c in contents]
    stamp = resources_pb2.Message()
    stamp.create_time.FromMicroseconds(created_us)
    return (workspace, thread, list(contents), len(contents), first, last, created_us, head, bodies,
            stamp.SerializeToString())  # fmt: skip


BULK_BATCH = 50_000
HYDRATE_TRIES = 5  # drops and reads per hydrate call before a cache-served read counts as an anomaly


Timed = Callable[[int], Awaitable[tuple[int, Tags]]]


def read_append_chat(name: str, op: str, get: Timed, put: Timed) -> Call:
    """The calls of ``read``, ``append`` and the chat loop (a read, then an append) from one read and one append.

    Raises:
        ValueError: ``op`` is none of these.
    """
    if op == READ:

        async def read(i: int, meter: Meter) -> tuple[int | None, Tags]:
            return await get(i)

        return read
    if op == APPEND:

        async def append(i: int, meter: Meter) -> tuple[int | None, Tags]:
            return await put(i)

        return append
    if is_chat(op):

        async def chat(i: int, meter: Meter) -> tuple[int | None, Tags]:
            start = time.perf_counter_ns()
            _, ta = await get(i)
            _, tb = await put(i)
            return time.perf_counter_ns() - start, ta + tb

        return chat
    raise ValueError(f"{name} has no operation {op}")


class Meter:
    """Counts units (operations, or streamed messages) that complete inside the measured window."""

    def __init__(self, t_start: float, t_end: float) -> None:
        self.t_start = t_start
        self.t_end = t_end
        self.units = 0

    def add(self, n: int) -> None:
        """Count ``n`` units now, if now is inside the window."""
        now = time.monotonic()
        if self.t_start <= now <= self.t_end:
            self.units += n

    def over(self) -> bool:
        """True once the window has ended."""
        return time.monotonic() > self.t_end


def role_of(seq: int) -> int:
    """The role of the preloaded message ``seq``: user for odd, assistant for even."""
    return resources_pb2.ROLE_USER if seq % 2 == 1 else resources_pb2.ROLE_ASSISTANT


class Target:
    """A benchmark target: subclasses implement open, preload and the calls of their operations."""

    per_message_ops: frozenset[str] = frozenset({STREAM})

    def __init__(self, name: str, spec: dict[str, Any], workload: Workload) -> None:
        self.name = name
        self.spec = spec
        self.wl = workload
        self.contents = workload.contents()

    async def open(self, max_workers: int) -> None:
        """Connect (``max_workers`` concurrent workers at most in this process)."""

    async def preload(self) -> dict[str, Any]:
        """Load the thread sets; return what was done."""
        return {}

    async def prepare(self, op: str, workers: Sequence[int], concurrency: int) -> None:
        """Untimed set-up before a phase (this process runs ``workers`` of ``concurrency``)."""

    def call(self, op: str, worker: int, local: int, concurrency: int, phase: str) -> Call:
        """The call of ``op`` for global worker ``worker`` (``local`` is its index in this process)."""
        raise NotImplementedError

    async def close(self) -> None:
        """Release connections."""

    def exchange(self, i: int, worker: int) -> tuple[str, str]:
        """The user and assistant texts of the ``i``-th exchange of a worker."""
        n = len(self.contents)
        k = (worker * 7919 + 2 * i) % n
        return self.contents[k], self.contents[(k + 1) % n]


# --- bulk load (hydration and stream threads) ---------------------------------------------------------


async def check_encoded(url: str, workspace: str, thread: str) -> None:
    """Raise unless the bulk rows' encoded column is what chatmem's codec writes for the same rows."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT seq, role, content, (extract(epoch FROM create_time) * 1000000)::bigint AS us, encoded "
            "FROM messages WHERE workspace_id = $1 AND thread_id = $2 AND seq IN (1, 2, 127, 128, 16383, 16384)",
            workspace,
            thread,
        )
    finally:
        await conn.close()
    for r in rows:
        expected = encode_message(workspace, thread, StoredMessage(r[0], Role(r[1]), r[2], "", {}, r[3]))
        if r[4] != expected:
            raise AssertionError(f"bulk row {thread}/{r[0]}: encoded column differs from chatmem's codec")


async def bulk_load(url: str, wl: Workload, *, thread_rows: bool) -> dict[str, Any]:
    """Insert the bulk sets (hydration, stream) straight into PostgreSQL, two connections in parallel.

    Args:
        url: the database (chatmem's, after it migrated, or limit-postgres's own).
        wl: the workload.
        thread_rows: also write chatmem's ``threads`` rows (last_seq, message_count).

    Returns:
        Messages written and seconds taken.
    """
    started = time.perf_counter()
    contents = wl.contents()
    jobs: list[tuple[str, int, int]] = []
    for s in (x for x in wl.sets.values() if x.bulk):
        for thread in s.ids():
            jobs += [(thread, a, min(a + BULK_BATCH - 1, s.length)) for a in range(1, s.length + 1, BULK_BATCH)]
    queue: asyncio.Queue[tuple[str, int, int]] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)

    async def loader() -> None:
        conn = await asyncpg.connect(url)
        try:
            while not queue.empty():
                thread, first, last = queue.get_nowait()
                await conn.execute(BULK_SQL, *bulk_args(wl.workspace, thread, contents, first, last))
        finally:
            await conn.close()

    await asyncio.gather(*(loader() for _ in range(2)))
    await check_encoded(url, wl.workspace, next(s for s in wl.sets.values() if s.bulk).ids()[0])
    total = sum(s.count * s.length for s in wl.sets.values() if s.bulk)
    if thread_rows:
        conn = await asyncpg.connect(url)
        try:
            for s in (x for x in wl.sets.values() if x.bulk):
                await conn.executemany(
                    "INSERT INTO threads (workspace_id, thread_id, last_seq, message_count) VALUES ($1, $2, $3, $3)",
                    [(wl.workspace, t, s.length) for t in s.ids()],
                )
        finally:
            await conn.close()
    return {"bulk_messages": total, "bulk_seconds": round(time.perf_counter() - started, 2)}


async def connections(url: str, n: int) -> list[asyncpg.Connection]:
    """Open ``n`` asyncpg connections (one per worker: no pool acquire on the measured path)."""
    return list(await asyncio.gather(*(asyncpg.connect(url) for _ in range(n))))


# --- limit-grpc ---------------------------------------------------------------------------------------


class LimitGrpc(Target):
    """The bare grpc.aio server: the real GetHistory method path and stubs' (de)serializers, a fixed reply."""

    async def open(self, max_workers: int) -> None:
        self.channel = grpc.aio.insecure_channel(self.spec["address"], options=CHANNEL_OPTIONS)
        self.method = self.channel.unary_unary(
            "/chatmem.v1.ThreadMemoryService/GetHistory",
            request_serializer=pb.GetHistoryRequest.SerializeToString,
            response_deserializer=pb.GetHistoryResponse.FromString,
            _registered_method=True,
        )
        request = pb.GetHistoryRequest(workspace_id=self.wl.workspace, thread_id="base-0000", limit=self.wl.window)
        await self.method(request, timeout=CALL_TIMEOUT_S, wait_for_ready=True)

    def call(self, op: str, worker: int, local: int, concurrency: int, phase: str) -> Call:
        assert op == RPC
        threads = worker_threads(self.wl.sets["base"].ids(), worker, concurrency)
        requests = [
            pb.GetHistoryRequest(workspace_id=self.wl.workspace, thread_id=t, limit=self.wl.window) for t in threads
        ]
        window = self.wl.window

        async def rpc(i: int, meter: Meter) -> tuple[int | None, Tags]:
            start = time.perf_counter_ns()
            response = await self.method(requests[i % len(requests)], timeout=CALL_TIMEOUT_S)
            elapsed = time.perf_counter_ns() - start
            return elapsed, (() if len(response.messages) == window else (f"messages={len(response.messages)}",))

        return rpc

    async def close(self) -> None:
        await self.channel.close()


# --- chatmem ------------------------------------------------------------------------------------------


class Chatmem(Target):
    """The chatmem server (one write mode), through the generated stubs on one channel per process."""

    async def open(self, max_workers: int) -> None:
        from server.storage.redis.keys import KeySpace

        # More than one channel only for a server with several worker processes: SO_REUSEPORT spreads
        # connections, not calls, so each channel gets its own connection (a local subchannel pool).
        count = max(1, int(self.spec.get("channels", 1)))
        options = (*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)) if count > 1 else CHANNEL_OPTIONS
        self.channels = [grpc.aio.insecure_channel(self.spec["address"], options=options) for _ in range(count)]
        for channel in self.channels:
            health = health_pb2_grpc.HealthStub(channel)
            response = await health.Check(health_pb2.HealthCheckRequest(), timeout=60, wait_for_ready=True)
            if response.status != health_pb2.HealthCheckResponse.SERVING:
                raise RuntimeError(f"{self.name} is {response.status}, not SERVING")
        self.stubs = [pb_grpc.ThreadMemoryServiceStub(c) for c in self.channels]
        self.stub = self.stubs[0]
        self.redis = aioredis.Redis.from_url(self.spec["redis_url"])
        self.keys = KeySpace(self.spec["redis_prefix"])
        self.durability = (
            resources_pb2.DURABILITY_QUEUED
            if self.spec["write_mode"] == "write_behind"
            else resources_pb2.DURABILITY_PERSISTED
        )

    async def preload(self) -> dict[str, Any]:
        started = time.perf_counter()
        jobs: list[tuple[str, int, int]] = []
        only = self.spec.get("preload_sets")  # the set names this target's operations use (default: all)
        sets = [self.wl.sets[name] for name in only] if only else self.wl.api_sets()
        for s in sets:
            for thread in s.ids():
                jobs += [(thread, a, min(a + 100, s.length + 1)) for a in range(1, s.length + 1, 100)]
        by_thread: dict[str, list[tuple[str, int, int]]] = {}
        for job in jobs:
            by_thread.setdefault(job[0], []).append(job)
        queue: asyncio.Queue[list[tuple[str, int, int]]] = asyncio.Queue()
        for batches in by_thread.values():
            queue.put_nowait(batches)
        n = len(self.contents)

        async def loader() -> None:
            while not queue.empty():
                for thread, first, end in queue.get_nowait():
                    messages = [
                        resources_pb2.MessageInput(role=role_of(seq), content=self.contents[seq % n])
                        for seq in range(first, end)
                    ]
                    await self.stub.AppendMessages(
                        pb.AppendMessagesRequest(
                            workspace_id=self.wl.workspace,
                            thread_id=thread,
                            messages=messages,
                            request_id=f"preload-{thread}-{first}",
                        ),
                        timeout=CALL_TIMEOUT_S,
                    )

        await asyncio.gather(*(loader() for _ in range(PRELOAD_CONCURRENCY)))
        done: dict[str, Any] = {
            "api_calls": len(jobs),
            "api_messages": sum(s.count * s.length for s in sets),
            "api_seconds": round(time.perf_counter() - started, 2),
        }
        if self.spec.get("bulk_db_url"):
            done.update(await bulk_load(self.spec["bulk_db_url"], self.wl, thread_rows=True))
        return done

    def call(self, op: str, worker: int, local: int, concurrency: int, phase: str) -> Call:
        s = self.wl.set_of(op)
        threads = worker_threads(s.ids(), worker, concurrency)
        ws, window, stub = self.wl.workspace, self.wl.window, self.stubs[local % len(self.stubs)]
        reads = [pb.GetHistoryRequest(workspace_id=ws, thread_id=t, limit=window) for t in threads]

        async def get(i: int) -> tuple[int, Tags, pb.GetHistoryResponse]:
            start = time.perf_counter_ns()
            response = await stub.GetHistory(reads[i % len(reads)], timeout=CALL_TIMEOUT_S)
            elapsed = time.perf_counter_ns() - start
            tags: list[str] = []
            if response.serving.degraded:
                tags.append("degraded")
            if len(response.messages) != window:
                tags.append(f"messages={len(response.messages)}")
            return elapsed, tuple(tags), response

        async def put(i: int) -> tuple[int, Tags]:
            user, assistant = self.exchange(i, worker)
            request = pb.AppendMessagesRequest(
                workspace_id=ws,
                thread_id=threads[i % len(threads)],
                messages=[
                    resources_pb2.MessageInput(role=resources_pb2.ROLE_USER, content=user),
                    resources_pb2.MessageInput(role=resources_pb2.ROLE_ASSISTANT, content=assistant),
                ],
                request_id=f"{phase}-{worker}-{i}",
            )
            start = time.perf_counter_ns()
            response = await stub.AppendMessages(request, timeout=CALL_TIMEOUT_S)
            elapsed = time.perf_counter_ns() - start
            tags = []
            if response.durability != self.durability:
                tags.append(f"durability={resources_pb2.Durability.Name(response.durability)}")
            if response.replayed:
                tags.append("replayed")
            if response.serving.degraded:
                tags.append("degraded")
            return elapsed, tuple(tags)

        if op == READ:

            async def read(i: int, meter: Meter) -> tuple[int | None, Tags]:
                elapsed, tags, response = await get(i)
                if response.serving.tier != resources_pb2.TIER_CACHE:
                    tags += (f"tier={resources_pb2.Tier.Name(response.serving.tier)}",)
                return elapsed, tags

            return read
        if op == APPEND:

            async def append(i: int, meter: Meter) -> tuple[int | None, Tags]:
                return await put(i)

            return append
        if is_chat(op):

            async def chat(i: int, meter: Meter) -> tuple[int | None, Tags]:
                start = time.perf_counter_ns()
                _, read_tags, response = await get(i)
                _, append_tags = await put(i)
                elapsed = time.perf_counter_ns() - start
                if response.serving.tier != resources_pb2.TIER_CACHE:
                    read_tags += (f"read tier={resources_pb2.Tier.Name(response.serving.tier)}",)
                return elapsed, read_tags + append_tags

            return chat
        if op == HYDRATE:

            async def hydrate(i: int, meter: Meter) -> tuple[int | None, Tags]:
                # chatmem refills the window after it has replied, so this client's previous read can
                # refill it just after the drop: then drop and read again, and time only a read that
                # the store served.
                window_key = self.keys.thread(ws, threads[i % len(threads)]).msgs
                for _ in range(HYDRATE_TRIES):
                    await self.redis.delete(window_key)
                    elapsed, tags, response = await get(i)
                    if response.serving.tier == resources_pb2.TIER_STORE:
                        return elapsed, tags
                return elapsed, (*tags, f"tier={resources_pb2.Tier.Name(response.serving.tier)}")

            return hydrate
        if op == STREAM:
            length = s.length

            async def stream(i: int, meter: Meter) -> tuple[int | None, Tags]:
                request = pb.StreamHistoryRequest(
                    workspace_id=ws, thread_id=threads[i % len(threads)], chunk_size=self.wl.stream_chunk
                )
                start = time.perf_counter_ns()
                received = 0
                call = stub.StreamHistory(request, timeout=STREAM_TIMEOUT_S)
                async for chunk in call:
                    meter.add(len(chunk.messages))
                    received += len(chunk.messages)
                    if meter.over():
                        call.cancel()
                        return None, ()
                elapsed = time.perf_counter_ns() - start
                return elapsed, (() if received == length else (f"messages={received}",))

            return stream
        raise ValueError(f"{self.name} has no operation {op}")

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()
        await self.redis.aclose()


# --- limit-redis --------------------------------------------------------------------------------------


class LimitRedis(Target):
    """Raw redis.asyncio (hiredis) doing the ideal commands: a window list of pre-serialized messages.

    Append: one pipeline of RPUSH (two messages), LTRIM to the window, EXPIRE. Read: LRANGE of the window.
    """

    TTL_S = 86_400

    async def open(self, max_workers: int) -> None:
        self.redis = aioredis.Redis.from_url(self.spec["redis_url"], max_connections=max(8, max_workers * 2))
        self.prefix = self.spec["redis_prefix"]
        await self.redis.ping()
        # The ideal client sends bytes it already has: a pool of serialized messages.
        self.items = [
            resources_pb2.Message(
                workspace_id=self.wl.workspace, thread_id="x", seq=k + 1, role=role_of(k + 1), content=c
            ).SerializeToString()
            for k, c in enumerate(self.contents)
        ]

    def key(self, thread: str) -> str:
        """The window list of a thread."""
        return f"{self.prefix}{{{thread}}}:msgs"

    async def preload(self) -> dict[str, Any]:
        started = time.perf_counter()
        window = self.wl.window
        n = len(self.items)
        pipe = self.redis.pipeline(transaction=False)
        for s in self.wl.api_sets():
            for thread in s.ids():
                key = self.key(thread)
                pipe.delete(key)
                pipe.rpush(key, *[self.items[seq % n] for seq in range(max(1, s.length - window + 1), s.length + 1)])
                pipe.expire(key, self.TTL_S)
        await pipe.execute()
        return {"seconds": round(time.perf_counter() - started, 2)}

    def call(self, op: str, worker: int, local: int, concurrency: int, phase: str) -> Call:
        threads = worker_threads(self.wl.set_of(op).ids(), worker, concurrency)
        keys = [self.key(t) for t in threads]
        r, window, items = self.redis, self.wl.window, self.items
        n = len(items)

        async def get(i: int) -> tuple[int, Tags]:
            start = time.perf_counter_ns()
            values = await r.lrange(keys[i % len(keys)], -window, -1)
            elapsed = time.perf_counter_ns() - start
            return elapsed, (() if len(values) == window else (f"messages={len(values)}",))

        async def put(i: int) -> tuple[int, Tags]:
            key = keys[i % len(keys)]
            k = (worker * 7919 + 2 * i) % n
            start = time.perf_counter_ns()
            pipe = r.pipeline(transaction=False)
            pipe.rpush(key, items[k], items[(k + 1) % n])
            pipe.ltrim(key, -window, -1)
            pipe.expire(key, self.TTL_S)
            await pipe.execute()
            return time.perf_counter_ns() - start, ()

        return read_append_chat(self.name, op, get, put)

    async def close(self) -> None:
        await self.redis.aclose()


# --- limit-postgres -----------------------------------------------------------------------------------


class LimitPostgres(Target):
    """Raw asyncpg, one connection per worker: a batched two-row insert; a keyset read of the last 50; a
    keyset scan of a whole thread in pages of the stream chunk size.

    Its own database holds its appendable threads (the same schema as chatmem's messages table); hydration
    and stream read chatmem's own rows of the same threads (``read_db_url``), read-only.
    """

    async def open(self, max_workers: int) -> None:
        self.url = self.spec["db_url"]
        self.read_url = self.spec["read_db_url"]
        conn = await asyncpg.connect(self.url)
        try:
            await conn.execute(MESSAGES_DDL)
        finally:
            await conn.close()
        self.conns: list[asyncpg.Connection] = await connections(self.url, max_workers)
        self.read_conns: list[asyncpg.Connection] = []
        self.max_workers = max_workers
        self.last_seq: dict[str, int] = {}

    async def preload(self) -> dict[str, Any]:
        started = time.perf_counter()
        conn = self.conns[0]
        for s in self.wl.api_sets():
            for thread in s.ids():
                await conn.execute(
                    "DELETE FROM messages WHERE workspace_id = $1 AND thread_id = $2", self.wl.workspace, thread
                )
                await conn.execute(BULK_SQL, *bulk_args(self.wl.workspace, thread, self.contents, 1, s.length))
        done: dict[str, Any] = {"seconds": round(time.perf_counter() - started, 2)}
        if self.spec.get("bulk"):
            done.update(await bulk_load(self.read_url, self.wl, thread_rows=False))
        return done

    async def prepare(self, op: str, workers: Sequence[int], concurrency: int) -> None:
        if op in (HYDRATE, STREAM) and not self.read_conns:
            self.read_conns = await connections(self.read_url, self.max_workers)
        if op == APPEND or is_chat(op):
            mine = [t for w in workers for t in worker_threads(self.wl.set_of(op).ids(), w, concurrency)]
            rows = await self.conns[0].fetch(
                "SELECT thread_id, max(seq) AS last FROM messages WHERE workspace_id = $1 AND thread_id = ANY($2) "
                "GROUP BY thread_id",
                self.wl.workspace,
                mine,
            )
            self.last_seq.update({r["thread_id"]: int(r["last"]) for r in rows})

    def call(self, op: str, worker: int, local: int, concurrency: int, phase: str) -> Call:
        s = self.wl.set_of(op)
        threads = worker_threads(s.ids(), worker, concurrency)
        ws, window = self.wl.workspace, self.wl.window

        async def get(conn: asyncpg.Connection, i: int) -> tuple[int, Tags]:
            start = time.perf_counter_ns()
            rows = await conn.fetch(LAST_N_SQL, ws, threads[i % len(threads)], window)
            rows.reverse()
            elapsed = time.perf_counter_ns() - start
            return elapsed, (() if len(rows) == window else (f"messages={len(rows)}",))

        async def put(i: int) -> tuple[int, Tags]:
            thread = threads[i % len(threads)]
            user, assistant = self.exchange(i, worker)
            seq = self.last_seq[thread]
            start = time.perf_counter_ns()
            await self.conns[local].execute(APPEND_SQL, ws, thread, seq + 1, user, seq + 2, assistant)
            self.last_seq[thread] = seq + 2
            return time.perf_counter_ns() - start, ()

        if op == HYDRATE:

            async def hydrate(i: int, meter: Meter) -> tuple[int | None, Tags]:
                return await get(self.read_conns[local], i)

            return hydrate
        if op == STREAM:
            chunk, length = self.wl.stream_chunk, s.length

            async def stream(i: int, meter: Meter) -> tuple[int | None, Tags]:
                conn = self.read_conns[local]
                thread = threads[i % len(threads)]
                start = time.perf_counter_ns()
                after = 0
                received = 0
                while True:
                    rows = await conn.fetch(PAGE_SQL, ws, thread, after, chunk)
                    if not rows:
                        break
                    meter.add(len(rows))
                    received += len(rows)
                    after = rows[-1][0]
                    if meter.over():
                        return None, ()
                elapsed = time.perf_counter_ns() - start
                return elapsed, (() if received == length else (f"messages={received}",))

            return stream

        async def read(i: int) -> tuple[int, Tags]:
            return await get(self.conns[local], i)

        return read_append_chat(self.name, op, read, put)

    async def close(self) -> None:
        for conn in (*self.conns, *self.read_conns):
            await conn.close()


# --- langchain-postgres -------------------------------------------------------------------------------


def session_uuid(thread: str) -> str:
    """The UUID session id langchain-postgres requires, derived from the thread id."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"chatmem-bench/{thread}"))


class LangchainPostgres(Target):
    """langchain-postgres ``PostgresChatMessageHistory`` on psycopg 3 async connections (autocommit, one per
    worker: the class takes one connection, and one connection runs one query at a time).

    Read returns the last 50 of ``aget_messages()``, which reads the whole session: the class has no other read.
    """

    TABLE = "chat_history"

    async def open(self, max_workers: int) -> None:
        import psycopg
        from langchain_core.messages import AIMessage, HumanMessage, message_to_dict
        from langchain_postgres import PostgresChatMessageHistory

        self.history_cls = PostgresChatMessageHistory
        self.human, self.ai = HumanMessage, AIMessage
        self.to_dict = message_to_dict
        url = self.spec["db_url"]
        self.conns = [await psycopg.AsyncConnection.connect(url, autocommit=True) for _ in range(max_workers)]
        await PostgresChatMessageHistory.acreate_tables(self.conns[0], self.TABLE)
        self.histories: dict[tuple[int, str], Any] = {}

    async def preload(self) -> dict[str, Any]:
        started = time.perf_counter()
        n = len(self.contents)
        docs = [
            (
                json.dumps(self.to_dict(self.human(content=c))),
                json.dumps(self.to_dict(self.ai(content=c))),
            )
            for c in self.contents
        ]
        conn = self.conns[0]
        async with conn.cursor() as cur:
            for s in self.wl.api_sets():
                for thread in s.ids():
                    sid = session_uuid(thread)
                    await cur.execute(f"DELETE FROM {self.TABLE} WHERE session_id = %s", (sid,))
                    async with cur.copy(f"COPY {self.TABLE} (session_id, message) FROM STDIN") as copy:
                        for seq in range(1, s.length + 1):
                            await copy.write_row((sid, docs[seq % n][0 if seq % 2 == 1 else 1]))
        return {"seconds": round(time.perf_counter() - started, 2)}

    def history(self, local: int, thread: str) -> Any:
        """The history object of a thread on a worker's connection."""
        key = (local, thread)
        if key not in self.histories:
            self.histories[key] = self.history_cls(self.TABLE, session_uuid(thread), async_connection=self.conns[local])
        return self.histories[key]

    def call(self, op: str, worker: int, local: int, concurrency: int, phase: str) -> Call:
        threads = worker_threads(self.wl.set_of(op).ids(), worker, concurrency)
        histories = [self.history(local, t) for t in threads]
        return _history_call(self, op, worker, histories)

    async def close(self) -> None:
        for conn in self.conns:
            await conn.close()


# --- langchain-redis ----------------------------------------------------------------------------------


class LangchainRedis(Target):
    """langchain-redis ``RedisChatMessageHistory`` (RedisVL: one JSON document per message, a RediSearch index).

    The class is synchronous; its inherited ``aget_messages``/``aadd_messages`` run it in the event loop's
    default executor, which the load generator sizes to 64 threads so that 32 workers are not throttled by it.
    """

    async def open(self, max_workers: int) -> None:
        import redis as sync_redis
        from langchain_core.messages import AIMessage, HumanMessage

        warnings.filterwarnings("ignore", module="langchain_redis")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        from langchain_redis import RedisChatMessageHistory

        self.human, self.ai = HumanMessage, AIMessage
        # A blocking pool larger than the executor: every executor thread may hold a connection at once.
        self.client = sync_redis.Redis(
            connection_pool=sync_redis.BlockingConnectionPool.from_url(
                self.spec["redis_url"], max_connections=EXECUTOR_THREADS + 16, timeout=60
            )
        )
        self.index = self.spec["index_name"]
        self.prefix = self.spec["redis_prefix"]
        loop = asyncio.get_running_loop()

        # With overwrite_index=False, every history after the first fails in langchain-redis 0.2.6 with
        # redis-py 8: its check of the existing index's prefixes calls list.index on FT.INFO's
        # index_definition, which redis-py 8 returns as a dict (AttributeError). overwrite_index=True skips
        # that check and re-creates the index; done here, before any message is loaded, that costs nothing.
        def build() -> dict[str, Any]:
            return {
                t: RedisChatMessageHistory(
                    t, redis_client=self.client, key_prefix=self.prefix, index_name=self.index, overwrite_index=True
                )
                for s in self.wl.api_sets()
                for t in s.ids()
            }

        self.histories = await loop.run_in_executor(None, build)

    async def preload(self) -> dict[str, Any]:
        started = time.perf_counter()
        n = len(self.contents)
        loop = asyncio.get_running_loop()

        def load(thread: str, length: int) -> None:
            history = self.histories[thread]
            history.clear()
            msgs = [
                (self.human if seq % 2 == 1 else self.ai)(content=self.contents[seq % n])
                for seq in range(1, length + 1)
            ]
            for a in range(0, length, 500):
                history.add_messages(msgs[a : a + 500])

        sets: list[ThreadSet] = self.wl.api_sets()
        await asyncio.gather(*(loop.run_in_executor(None, load, t, s.length) for s in sets for t in s.ids()))
        return {"seconds": round(time.perf_counter() - started, 2)}

    def call(self, op: str, worker: int, local: int, concurrency: int, phase: str) -> Call:
        threads = worker_threads(self.wl.set_of(op).ids(), worker, concurrency)
        return _history_call(self, op, worker, [self.histories[t] for t in threads])

    async def close(self) -> None:
        self.client.close()


def _history_call(target: Any, op: str, worker: int, histories: list[Any]) -> Call:
    """The calls of a LangChain ``BaseChatMessageHistory``: the async API, as an async application uses it.

    A read that returns fewer messages than the thread was preloaded with is tagged ``short history`` (a
    RediSearch query that hit its time limit returns a partial result instead of an error).
    """
    window = target.wl.window
    preloaded = target.wl.set_of(op).length
    human, ai = target.human, target.ai

    async def get(i: int) -> tuple[int, Tags]:
        start = time.perf_counter_ns()
        messages = await histories[i % len(histories)].aget_messages()
        last = messages[-window:]
        elapsed = time.perf_counter_ns() - start
        return elapsed, (() if len(messages) >= preloaded and len(last) == window else ("short history",))

    async def put(i: int) -> tuple[int, Tags]:
        user, assistant = target.exchange(i, worker)
        start = time.perf_counter_ns()
        await histories[i % len(histories)].aadd_messages([human(content=user), ai(content=assistant)])
        return time.perf_counter_ns() - start, ()

    return read_append_chat(target.name, op, get, put)


KINDS: dict[str, type[Target]] = {
    "limit-grpc": LimitGrpc,
    "limit-redis": LimitRedis,
    "limit-postgres": LimitPostgres,
    "langchain-postgres": LangchainPostgres,
    "langchain-redis": LangchainRedis,
    "chatmem": Chatmem,
}


def build(name: str, spec: dict[str, Any], workload: Workload) -> Target:
    """Build the target ``name`` of kind ``spec['kind']``."""
    return KINDS[spec["kind"]](name, spec, workload)
