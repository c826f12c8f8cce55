"""The write_behind flusher: outbox streams (one per bucket) into the durable store, at least once.

Each server process runs one Flusher; many may run at once against one Redis. A batch is read with
XREADGROUP (so replicas share the work), written to the store in one idempotent transaction, and only
then acknowledged and deleted from the stream by one script per bucket, which also marks the threads
flushed. If the store fails, the batch is retried with backoff and nothing is acknowledged. Entries
that a crashed process left pending are taken over with XAUTOCLAIM once they have been idle for
``claim_idle_ms``. Redelivery never duplicates a row: the store ignores a (workspace, thread, seq)
it already holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError, ResponseError

from server.storage.codec import decode_framed
from server.storage.health import TierHealth
from server.storage.models import NewThreadOptions, QueuedAppend, ThreadKey
from server.storage.protocols import OutboxSink, StoreUnavailableError
from server.storage.redis import scripts
from server.storage.redis.connection import PipelinedRedis, pack
from server.storage.redis.keys import BUCKETS, KeySpace
from server.storage.redis.scripts import Script

log = logging.getLogger(__name__)

GROUP = "chatmem-flusher"


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One stream entry: where it sits and what it holds."""

    stream: str
    entry_id: bytes
    append: QueuedAppend


def parse_entry(stream: str, entry_id: bytes, fields: dict[bytes, bytes]) -> OutboxEntry:
    """Turn a stream entry written by scripts.APPEND_QUEUED into an OutboxEntry."""
    key = ThreadKey(fields[b"w"].decode(), fields[b"t"].decode())
    messages = tuple(decode_framed(fields[b"m"]))
    options = None
    if fields.get(b"o"):
        raw = json.loads(fields[b"o"])
        options = NewThreadOptions(raw.get("user_id", ""), raw.get("title", ""), raw.get("ttl_seconds"))
    append = QueuedAppend(
        key=key,
        incarnation=int(fields[b"i"]),
        request_id=fields.get(b"r", b"").decode(),
        first_seq=int(fields[b"f"]),
        message_count=int(fields[b"c"]),
        new_thread=options,
        messages=messages,
    )
    return OutboxEntry(stream, entry_id, append)


class Flusher:
    """Moves acknowledged write_behind appends from Redis into the store.

    Args:
        client: the redis.asyncio client (decode_responses=False).
        keys: the key space.
        store: the durable store.
        consumer: this process's consumer name in the group.
        batch_size: the most entries in one store transaction.
        block_ms: how long one read waits for new entries (the flush latency bound when idle).
        linger_ms: after a batch smaller than ``batch_size``, wait this long before reading again, so
            that at low rates one transaction carries several appends instead of one each.
        claim_idle_ms: how long an entry stays pending before another consumer takes it over.
        claim_interval_s: how often to look for such entries.
        cluster: read bucket by bucket (Redis Cluster rejects multi-slot reads).
        store_health: the store tier's health record.
        reader: a connection of the flusher's own for its reads, claims and acknowledgements, or None
            for ``client``. Its read of all 256 streams is packed once: redis-py packs those 515
            arguments again on every read (about 0.6 ms), which at a few hundred batches a second was
            a large share of a write_behind append's CPU.
    """

    def __init__(
        self,
        client: Any,
        keys: KeySpace,
        store: OutboxSink,
        *,
        consumer: str,
        batch_size: int,
        block_ms: int,
        linger_ms: int = 0,
        claim_idle_ms: int,
        claim_interval_s: float,
        cluster: bool,
        store_health: TierHealth,
        reader: PipelinedRedis | None = None,
    ) -> None:
        self._client = client
        self._reader = None if cluster else reader
        self._keys = keys
        self._store = store
        self._consumer = consumer
        self._batch_size = batch_size
        self._block_ms = block_ms
        self._linger_s = linger_ms / 1000
        self._claim_idle_ms = claim_idle_ms
        self._claim_interval_s = claim_interval_s
        self._cluster = cluster
        self._store_health = store_health
        self._streams = [keys.outbox(b) for b in range(BUCKETS)]
        self._bucket = {stream: b for b, stream in enumerate(self._streams)}
        self._ack = Script(scripts.ACK_FLUSHED)
        self._read_packed = pack(
            b"XREADGROUP", b"GROUP", GROUP, consumer, b"COUNT", batch_size, b"BLOCK", block_ms, b"STREAMS",
            *self._streams, *([b">"] * len(self._streams)),
        )  # fmt: skip
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.flushed_messages = 0
        self.flushed_entries = 0

    async def start(self) -> None:
        """Create the consumer groups (idempotent) and start flushing."""
        try:
            await self._ensure_groups()
        except Exception as exc:  # noqa: BLE001 - Redis (or a cluster node) may be down: _run retries
            log.warning("outbox groups not created yet (%s: %s); retrying while flushing", type(exc).__name__, exc)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _ensure_groups(self) -> None:
        # Id 0: a group made after Redis restarted empty (or its streams were wiped) still reads
        # the entries added before it existed.
        pipe = self._client.pipeline(transaction=False)
        for stream in self._streams:
            pipe.xgroup_create(stream, GROUP, id="0", mkstream=True)
        for result in await pipe.execute(raise_on_error=False):
            if isinstance(result, ResponseError) and "BUSYGROUP" not in str(result):
                raise result

    async def stop(self, drain_s: float) -> None:
        """Stop after the batch in flight; wait at most ``drain_s``. Unacknowledged entries stay queued."""
        self._stopping = True
        try:
            if self._task is None:
                return
            try:
                await asyncio.wait_for(asyncio.shield(self._task), drain_s)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        finally:
            if self._reader is not None:
                await self._reader.aclose()

    async def depth(self) -> int:
        """Return the number of entries in all outbox streams (unflushed or in flight)."""
        pipe = self._client.pipeline(transaction=False)
        for stream in self._streams:
            pipe.xlen(stream)
        return sum(int(n) for n in await pipe.execute())

    async def backlog(self) -> tuple[int, float]:
        """Return the entries in all outbox streams and the age in seconds of the oldest (0 when empty).

        Stream ids are Redis's clock in milliseconds, so the age is measured against Redis's TIME.
        """
        pipe = self._client.pipeline(transaction=False)
        for stream in self._streams:
            pipe.xlen(stream)
            pipe.xrange(stream, "-", "+", count=1)
        replies = await pipe.execute()
        seconds, micros = await self._client.time()
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        depth = 0
        oldest_ms: int | None = None
        for length, first in zip(replies[0::2], replies[1::2], strict=True):
            depth += int(length)
            if first:
                raw = first[0][0]
                ms = int((raw.decode() if isinstance(raw, bytes) else str(raw)).partition("-")[0])
                oldest_ms = ms if oldest_ms is None else min(oldest_ms, ms)
        return depth, 0.0 if oldest_ms is None else max(0.0, (now_ms - oldest_ms) / 1000)

    async def _run(self) -> None:
        next_claim = 0.0
        backoff = 0.05
        while not self._stopping:
            try:
                entries: list[OutboxEntry] = []
                if time.monotonic() >= next_claim:
                    entries = await self._claim()
                    next_claim = time.monotonic() + self._claim_interval_s
                if not entries:
                    entries = await self._read()
                for start in range(0, len(entries), self._batch_size):
                    if not await self._flush(entries[start : start + self._batch_size]):
                        break
                backoff = 0.05
                if entries and len(entries) < self._batch_size and self._linger_s and not self._stopping:
                    await asyncio.sleep(self._linger_s)
            except ResponseError as exc:
                if "NOGROUP" in str(exc):
                    log.warning("outbox consumer groups are missing (Redis restarted empty?); creating them again")
                    with contextlib.suppress(RedisError, OSError, TimeoutError):
                        await self._ensure_groups()
                else:
                    log.warning("redis refused a flusher command: %s", exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
            except (RedisError, OSError, TimeoutError) as exc:
                log.debug("flusher cannot reach redis: %s", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("flusher failed a round; retrying")
                await asyncio.sleep(1.0)

    async def _read(self) -> list[OutboxEntry]:
        if self._cluster:
            found: list[OutboxEntry] = []
            for stream in self._streams:
                reply = await self._client.xreadgroup(GROUP, self._consumer, {stream: ">"}, count=self._batch_size)
                found += self._parse_reply(reply)
            if not found:
                await asyncio.sleep(self._block_ms / 1000)
            return found
        if self._reader is not None:
            return self._parse_raw(await self._reader.execute_packed(self._read_packed))
        reply = await self._client.xreadgroup(
            GROUP, self._consumer, dict.fromkeys(self._streams, ">"), count=self._batch_size, block=self._block_ms
        )
        return self._parse_reply(reply)

    def _parse_raw(self, reply: Any) -> list[OutboxEntry]:
        # The reply as Redis sends it (hiredis): [[stream, [[id, [field, value, ...]], ...]], ...] or nil.
        found = []
        for stream, items in reply or ():
            name = stream.decode()
            for entry_id, flat in items:
                if flat:
                    found.append(parse_entry(name, entry_id, dict(zip(flat[0::2], flat[1::2], strict=True))))
        return found

    def _parse_reply(self, reply: Any) -> list[OutboxEntry]:
        found = []
        for stream, items in reply or []:
            name = stream.decode() if isinstance(stream, bytes) else stream
            for entry_id, fields in items:
                if fields:
                    found.append(parse_entry(name, entry_id, fields))
        return found

    async def _claim(self) -> list[OutboxEntry]:
        pipe = self._client.pipeline(transaction=False)
        for stream in self._streams:
            pipe.xautoclaim(stream, GROUP, self._consumer, self._claim_idle_ms, start_id="0-0", count=self._batch_size)
        found = []
        for stream, result in zip(self._streams, await pipe.execute(), strict=True):
            for entry_id, fields in result[1]:
                if fields:
                    found.append(parse_entry(stream, entry_id, fields))
        if found:
            log.info("claimed %d outbox entries left pending by another consumer", len(found))
        return found

    async def _flush(self, entries: Sequence[OutboxEntry]) -> bool:
        """Write a batch to the store (retrying while it is down), then acknowledge it; False if stopped."""
        backoff = 0.05
        while True:
            try:
                inserted = await self._store.apply_queued([e.append for e in entries])
                break
            except StoreUnavailableError as exc:
                self._store_health.mark_down(str(exc))
                if self._stopping:
                    return False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
        self._store_health.mark_up()
        await self._acknowledge(entries)
        self.flushed_messages += inserted
        self.flushed_entries += len(entries)
        return True

    async def _acknowledge(self, entries: Sequence[OutboxEntry]) -> None:
        by_stream: dict[str, list[OutboxEntry]] = defaultdict(list)
        for e in entries:
            by_stream[e.stream].append(e)
        for stream, group in by_stream.items():
            tops: dict[ThreadKey, tuple[int, int]] = {}
            for e in group:
                top = e.append.first_seq + len(e.append.messages) - 1
                inc, seen = tops.get(e.append.key, (e.append.incarnation, 0))
                tops[e.append.key] = (max(inc, e.append.incarnation), max(seen, top))
            ordered = list(tops.items())
            keys = [stream, self._keys.pending(self._bucket[stream])]
            keys += [self._keys.thread(k.workspace_id, k.thread_id).meta for k, _ in ordered]
            args: list[Any] = [GROUP, len(group), *[e.entry_id for e in group]]
            for k, (inc, top) in ordered:
                args += [f"{k.workspace_id}/{k.thread_id}", inc, top]
            await self._ack(self._reader or self._client, keys, args)
