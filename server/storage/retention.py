"""The retention sweeper: deletes L2 data older than MEMORY__RETENTION_DAYS, periodically, one replica at a time.

Each sweep takes the store's retention lease (a PostgreSQL advisory lock, so with many replicas one
sweeps and the others skip that round), then deletes, in batches of MEMORY__RETENTION_SWEEP_BATCH and
one short transaction each: threads with no change since the cutoff (through the repository's delete
path, so a tombstone keeps the outbox from bringing them back and their Redis keys are dropped), then
messages created before the cutoff in the threads that remain (their cached windows are dropped and
refilled from the store). A sweep that deleted something writes an audit record.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
from dataclasses import dataclass

from server import audit
from server.errors import UnavailableError
from server.storage.erasure import Eraser
from server.storage.protocols import RetentionStore, StoreUnavailableError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SweepResult:
    """What one sweep did. ``swept`` is False when another replica held the lease."""

    swept: bool
    cutoff_us: int
    threads: int = 0
    thread_messages: int = 0
    messages: int = 0
    trimmed_threads: int = 0


class Sweeper:
    """Runs retention sweeps every ``interval_s``.

    Args:
        eraser: deletes through the consistency policy.
        retention: the store's retention part (for the lease).
        retention_s: how old data may get, in seconds.
        interval_s: the time between sweeps.
        batch: the most rows per batch (per transaction).
    """

    def __init__(
        self, eraser: Eraser, retention: RetentionStore, *, retention_s: float, interval_s: float, batch: int
    ) -> None:
        self._eraser = eraser
        self._retention = retention
        self._retention_s = retention_s
        self._interval_s = interval_s
        self._batch = batch
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start sweeping in the background (the first sweep runs at once)."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop; a sweep in progress is cancelled between its short transactions' awaits."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.sweep_once()
            except asyncio.CancelledError:
                raise
            except (UnavailableError, StoreUnavailableError) as exc:
                log.warning("retention sweep skipped: %s", exc)
            except Exception:
                log.exception("retention sweep failed; retrying at the next interval")
            await asyncio.sleep(self._interval_s)

    async def sweep_once(self, now_s: float | None = None) -> SweepResult:
        """Run one sweep now.

        Args:
            now_s: the current time (seconds since the epoch); the cutoff is this minus the retention.

        Returns:
            What was deleted, or ``swept=False`` if another sweeper holds the lease.

        Raises:
            UnavailableError: the store is down (what was deleted so far stays deleted).
        """
        now = time.time() if now_s is None else now_s
        cutoff_us = int((now - self._retention_s) * 1_000_000)
        threads = thread_messages = messages = trimmed_threads = 0
        outcome = "failed"
        try:
            async with self._retention.retention_lease() as held:
                if not held:
                    return SweepResult(False, cutoff_us)
                threads, thread_messages = await self._eraser.expire_idle_threads(cutoff_us, self._batch)
                messages, trimmed_threads = await self._eraser.trim_old_messages(cutoff_us, self._batch)
                outcome = "done"
        finally:
            # A sweep cut short still records what its finished phases deleted.
            if threads or messages:
                audit.record(
                    "retention_sweep",
                    outcome=outcome,
                    cutoff=datetime.datetime.fromtimestamp(cutoff_us / 1e6, datetime.UTC).isoformat(),
                    deleted_threads=threads,
                    deleted_thread_messages=thread_messages,
                    deleted_messages=messages,
                    trimmed_threads=trimmed_threads,
                )
        return SweepResult(True, cutoff_us, threads, thread_messages, messages, trimmed_threads)
