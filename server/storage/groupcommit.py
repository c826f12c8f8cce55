"""Group commit: concurrent submissions ride in one batch while the previous batch commits."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class GroupCommitter(Generic[T, R]):
    """Coalesces concurrent items into batches for a commit function, one batch at a time.

    The first item commits at once (no added latency); items that arrive while a batch is in flight
    wait and then go together. A waiter that gives up (its RPC deadline passed) before its batch starts
    is dropped, so no store call starts for an RPC that has already ended. A waiter that gives up after
    its batch started does not undo the commit: its retry with the same request_id replays the result.

    Args:
        commit: commits a batch; returns one result or exception per item, in order.
        max_batch: the most items in one batch.
    """

    def __init__(self, commit: Callable[[Sequence[T]], Awaitable[Sequence[R | Exception]]], max_batch: int) -> None:
        self._commit = commit
        self._max_batch = max_batch
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._runner: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        """Queue an item and wait for its own result (or exception)."""
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, fut))
        if self._runner is None:
            self._runner = asyncio.create_task(self._run())
        return await fut

    async def _run(self) -> None:
        try:
            while self._queue:
                batch = [(i, f) for i, f in self._queue[: self._max_batch] if not f.done()]
                del self._queue[: self._max_batch]
                if not batch:
                    continue
                try:
                    results = await self._commit([i for i, _ in batch])
                except Exception as exc:  # noqa: BLE001 - every waiter of a failed batch gets its error
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                for (_, fut), res in zip(batch, results, strict=True):
                    if fut.done():
                        continue
                    if isinstance(res, Exception):
                        fut.set_exception(res)
                    else:
                        fut.set_result(res)
        finally:
            self._runner = None

    async def close(self) -> None:
        """Wait for the batch in flight, if any."""
        if self._runner is not None:
            await asyncio.shield(self._runner)
