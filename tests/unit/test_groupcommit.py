"""Group commit batching."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from server.storage.groupcommit import GroupCommitter


async def test_concurrent_items_share_batches_and_get_their_own_results() -> None:
    batches: list[list[int]] = []

    async def commit(items: Sequence[int]) -> list[int | Exception]:
        batches.append(list(items))
        await asyncio.sleep(0.01)
        return [ValueError(i) if i == 3 else i * 10 for i in items]

    gc: GroupCommitter[int, int] = GroupCommitter(commit, max_batch=4)
    tasks = [asyncio.ensure_future(gc.submit(i)) for i in range(10)]
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert [d if not isinstance(d, Exception) else "err" for d in done] == [0, 10, 20, "err", 40, 50, 60, 70, 80, 90]
    assert batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


async def test_a_failed_batch_fails_its_waiters_and_the_next_batch_still_runs() -> None:
    calls = 0

    async def commit(items: Sequence[int]) -> list[int | Exception]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        if calls == 1:
            raise ConnectionError("store down")
        return list(items)

    gc: GroupCommitter[int, int] = GroupCommitter(commit, max_batch=8)
    first = asyncio.ensure_future(gc.submit(1))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(gc.submit(2))
    with pytest.raises(ConnectionError):
        await first
    assert await second == 2


async def test_a_waiter_that_gave_up_before_its_batch_is_not_committed() -> None:
    committed: list[int] = []

    async def commit(items: Sequence[int]) -> list[int | Exception]:
        committed.extend(items)
        await asyncio.sleep(0.05)
        return list(items)

    gc: GroupCommitter[int, int] = GroupCommitter(commit, max_batch=8)
    first = asyncio.ensure_future(gc.submit(1))
    await asyncio.sleep(0)
    late = asyncio.ensure_future(gc.submit(2))
    await asyncio.sleep(0.01)
    late.cancel()
    assert await first == 1
    await gc.close()
    assert committed == [1]
