"""Writes that the store numbers (write_through, or write_behind around Redis): group commit, then the window push.

Concurrent appends share one transaction (groupcommit.py). After the commit, each thread's cached window
is extended with the group's new messages in seq order, or invalidated when it is not contiguous; a push
that fails marks the thread for repair, so a window that may have missed it is never served.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from server.storage.codec import encode_messages
from server.storage.groupcommit import GroupCommitter
from server.storage.models import AppendCommand, AppendResult, Fence, Repair, ThreadKey
from server.storage.protocols import (
    Cache,
    CacheFencedError,
    CacheUnavailableError,
    MessageStore,
    StoreUnavailableError,
)
from server.storage.tiers import Tiers

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Item:
    command: AppendCommand
    fence: Fence | None


def _merge(fences: Sequence[Fence | None]) -> Fence | None:
    # The oldest epoch per bucket: a group with a stale fence fails whole and is retried one by one.
    merged: Fence = {}
    for fence in fences:
        for bucket, epoch in (fence or {}).items():
            merged[bucket] = min(epoch, merged.get(bucket, epoch))
    return merged or None


def _pushable(result: AppendResult | Exception, usable: set[int]) -> bool:
    return isinstance(result, AppendResult) and result.thread_key.bucket in usable


class StoreWriter:
    """Group-commits appends in the store and pushes them to the cached windows.

    Args:
        tiers: the tiers.
        messages: the store's messages.
        push: extend cached windows after a commit (write_through); False when the store path only runs
            around Redis (write_behind).
        fallback_gap: seqs a thread skips on its first write around Redis (see repository.py).
        max_group: the most appends in one transaction.
    """

    def __init__(self, tiers: Tiers, messages: MessageStore, *, push: bool, fallback_gap: int, max_group: int) -> None:
        self._tiers = tiers
        self._messages = messages
        self._push = push
        self._fallback_gap = fallback_gap
        self._committer: GroupCommitter[_Item, tuple[AppendResult, bool]] = GroupCommitter(
            self._commit_group, max_group
        )

    async def submit(self, command: AppendCommand, fence: Fence | None = None) -> tuple[AppendResult, bool]:
        """Commit an append with whatever else is waiting; return its result and whether it skipped the cache.

        Args:
            command: the append.
            fence: for an append that already chose to go around Redis (write_behind), the epochs taken
                when it did; without, the group decides per bucket (write_through) and takes them then.
        """
        return await self._committer.submit(_Item(command, fence))

    async def close(self) -> None:
        """Finish the group in flight."""
        await self._committer.close()

    async def _commit_group(self, items: Sequence[_Item]) -> list[tuple[AppendResult, bool] | Exception]:
        usable: set[int] = set()
        fences: list[Fence | None] = []
        for item in items:
            fence = item.fence
            bucket = item.command.key.bucket
            if fence is None and self._tiers.cache is not None:
                if self._push and (bucket in usable or await self._tiers.usable_cache(bucket) is not None):
                    usable.add(bucket)
                else:
                    # Taken at the decision (fence() does not suspend when it knows the epochs): a recovery
                    # that ends later fences it.
                    fence = await self._tiers.fence([bucket])
            fences.append(fence)
        merged = _merge(fences)
        commands = [i.command for i in items]
        gap = self._fallback_gap
        try:
            results = await self._messages.append_batch(commands, repair=merged, fallback_gap=gap)
        except StoreUnavailableError:
            raise
        except Exception as exc:
            if len(commands) == 1:
                raise
            if not isinstance(exc, CacheFencedError):
                # One request the store rejects must not fail the others that shared its transaction.
                log.exception("a group commit failed; committing its %d appends one by one", len(commands))
            results = []
            for command, fence in zip(commands, fences, strict=True):
                try:
                    results += await self._messages.append_batch([command], repair=fence, fallback_gap=gap)
                except StoreUnavailableError:
                    raise
                except Exception as one:  # noqa: BLE001 - reported to that request's caller (INTERNAL unless fenced)
                    results.append(one)
        failed: set[ThreadKey] = set()
        if self._tiers.cache is not None and usable:
            failed = await self._push_windows(self._tiers.cache, [r for r in results if _pushable(r, usable)])
        around = set(merged or ())
        return [
            r if isinstance(r, Exception) else (r, r.thread_key.bucket in around or r.thread_key in failed)
            for r in results
        ]

    async def _push_windows(self, cache: Cache, results: Sequence[AppendResult | Exception]) -> set[ThreadKey]:
        # One push per thread with all of the group's new messages of that thread, in seq order,
        # so that a group never invalidates its own window; threads go to Redis concurrently.
        per_thread: dict[ThreadKey, list[AppendResult]] = defaultdict(list)
        for r in results:
            if isinstance(r, AppendResult) and r.stored:
                per_thread[r.thread_key].append(r)
        failed: set[ThreadKey] = set()

        async def push(key: ThreadKey, group: list[AppendResult]) -> None:
            messages = [m for r in group for m in r.stored]
            try:
                await cache.push_window(
                    group[-1].thread, group[0].first_seq, encode_messages(key.workspace_id, key.thread_id, messages)
                )
            except CacheUnavailableError as exc:
                self._tiers.trip(key.bucket, exc)
                failed.add(key)

        await asyncio.gather(*(push(k, g) for k, g in per_thread.items()))
        if failed:
            # The push may have landed or not: mark the windows for repair before Redis is used again.
            await self._tiers.mark([Repair("t", k.workspace_id, k.thread_id) for k in failed])
        return failed
