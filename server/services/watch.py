"""WatchThread's loop: send what a thread gained after a seq, then wait for the hub to say it changed.

Each batch is read afresh from the tiers (the cached window when it reaches back to the last seq
sent, else the store), so a watcher holds at most one batch, never a queue, and no append waits for
it. Seqs at or below the last one sent are never sent again; a resumed watch passes that seq back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import grpc

from chatmem.v1 import thread_memory_service_pb2 as pb
from server.services import convert
from server.services.handler import abort_error
from server.storage.codec import frame_item, split_framed
from server.storage.models import ThreadKey, Tier
from server.storage.repository import Repository
from server.storage.results import Served
from server.storage.watch import Watcher, WatchHub

T = TypeVar("T")
S = TypeVar("S")
Req = TypeVar("Req")

# Read a few more window items than the notices account for: a notice that is late then costs no store read.
_SLACK = 4
_SERVING = {
    (tier, degraded): pb.WatchThreadResponse(serving=convert.serving(Served(tier, degraded))).SerializeToString()
    for tier in Tier
    for degraded in (False, True)
}


_SEQ = 3
_SUMMARIZES_THROUGH_SEQ = 14  # set on a CompactThread summary, which a compacted window starts with


def seq_of(item: bytes) -> int:
    """Return the seq of a serialised Message without parsing the rest of it."""
    seq = varint_field(item, _SEQ)
    if not seq:
        raise ValueError("a stored message has no seq")
    return seq


def varint_field(item: bytes, number: int) -> int:
    """Return the integer field ``number`` of a serialised message (0 when absent), skipping the others unparsed."""
    pos = 0
    while pos < len(item):
        tag, pos = _varint(item, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(item, pos)
            if field == number:
                return value
        elif wire == 2:
            length, pos = _varint(item, pos)
            pos += length
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            break
    return 0


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def live_stream(
    fn: Callable[[S, Req, grpc.aio.ServicerContext], AsyncIterator[bytes]],
) -> Callable[[S, Req, grpc.aio.ServicerContext], AsyncIterator[bytes]]:
    """Wrap an open-ended stream: no time limit between responses (the client's deadline ends it); errors mapped."""

    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        iterator = fn(self, request, context).__aiter__()
        try:
            async for item in iterator:
                yield item
        except Exception as exc:  # noqa: BLE001 - domain errors to statuses, anything else INTERNAL
            await abort_error(context, exc, fn.__name__)
        finally:
            await iterator.aclose()  # type: ignore[attr-defined]

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


class WatchLoop:
    """One watch: reads, sends and waits until the client goes away.

    Args:
        repo: the repository.
        hub: the process's watch hub.
        key: the thread.
        after_seq: the last seq the client has.
        chunk: the most messages per response.
        frame_bytes: the most bytes per response (one larger message still goes alone).
        read_timeout_s: the time budget of each read of the tiers.
    """

    def __init__(
        self,
        repo: Repository,
        hub: WatchHub,
        key: ThreadKey,
        after_seq: int,
        *,
        chunk: int,
        frame_bytes: int,
        read_timeout_s: float,
    ) -> None:
        self._repo = repo
        self._hub = hub
        self._key = key
        self.last = after_seq
        self._chunk = chunk
        self._frame_bytes = frame_bytes
        self._read_timeout_s = read_timeout_s

    async def run(self) -> AsyncIterator[bytes]:
        """Yield serialised WatchThreadResponses until cancelled.

        Raises:
            NotFoundError: the thread was deleted.
            QuotaExceededError: the workspace has too many watches open.
            UnavailableError: the server is shutting down, or the store is down when it must be read.
        """
        watcher = self._hub.open(self._key)
        try:
            removals = watcher.removals
            fresh = True
            while True:
                watcher.arm(fresh=fresh)
                if watcher.removals != removals:
                    removals = watcher.removals
                    await self._bounded(self._repo.get_thread(self._key))  # NOT_FOUND ends the watch
                async for response in self._fresh(watcher):
                    yield response
                wait_s, _ = self._hub.interval()
                fresh = not await watcher.wait(wait_s)  # a poll reads anew; a notice may share a read
        finally:
            watcher.close()

    async def _bounded(self, work: Awaitable[T]) -> T:
        async with asyncio.timeout(self._read_timeout_s):
            return await work

    async def _fresh(self, watcher: Watcher) -> AsyncIterator[bytes]:
        tail = watcher.tail
        if tail is not None and tail.first_seq == self.last + 1:
            # The news is exactly one local append, whose stored bytes the hub kept: no read needed.
            for response in self._responses(list(tail.items), watcher.newest, tail.served):
                yield response
            return
        window_size = self._repo.window
        news = watcher.newest - self.last
        limit = min(window_size, news + _SLACK) if news > 0 else window_size
        window, limit = await self._bounded(watcher.read(limit, lambda: self._repo.history(self._key, limit)))
        items = split_framed(window.framed)
        if not items:
            if self.last:
                # Empty after messages were seen: deleted (NOT_FOUND) unless truncated, checked in the store.
                await self._bounded(self._repo.get_thread(self._key))
            return
        through = varint_field(items[0], _SUMMARIZES_THROUGH_SEQ)
        if through:
            # A compacted window starts with a summary that stands in for the messages up to `through`:
            # watchers get the messages themselves (from the store if they lack some), never the summary.
            items = items[1:]
            whole = not items or len(items) + 1 < limit or seq_of(items[0]) <= self.last + 1
            covered = self.last >= through and whole
        else:
            covered = len(items) < limit or seq_of(items[0]) <= self.last + 1
        if covered:
            # Seqs ascend: only the new tail is looked at, from the end.
            start = len(items)
            while start and seq_of(items[start - 1]) > self.last:
                start -= 1
            if start < len(items):
                for response in self._responses(items[start:], seq_of(items[-1]), window.served):
                    yield response
            return
        # The window starts after a message the client lacks: read the gap from the store, in pages.
        pages = self._repo.stream(self._key, self.last, self._chunk).__aiter__()
        try:
            while True:
                try:
                    page = await self._bounded(pages.__anext__())
                except StopAsyncIteration:
                    return
                for response in self._responses(page, seq_of(page[-1]), self._repo.served_by_store(self._key)):
                    yield response
        finally:
            await pages.aclose()  # type: ignore[attr-defined]

    def _responses(self, items: list[bytes], last_seq: int, served: Served) -> Iterator[bytes]:
        _, polling = self._hub.interval()
        serving = _SERVING[(served.tier, served.degraded or polling)]
        batch: list[bytes] = []
        size = 0
        for item in map(frame_item, items):
            if batch and (len(batch) >= self._chunk or size + len(item) > self._frame_bytes):
                yield b"".join(batch) + serving
                batch, size = [], 0
            batch.append(item)
            size += len(item)
        # Only now is everything up to last_seq handed over; a cancelled send leaves ``last`` where it was.
        self.last = last_seq
        yield b"".join(batch) + serving
