"""The client's fork, truncate, pop and compact, async and sync, against a real server on each backend."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from chatmem import ConflictError, FailedPreconditionError, MemoryClient, SyncMemoryClient
from tests.conftest import Harness

pytestmark = pytest.mark.integration


@pytest.fixture
async def memory(api: Harness) -> AsyncIterator[MemoryClient]:
    async with MemoryClient.connect(f"127.0.0.1:{api.app.port}", workspace_id=api.ws) as client:
        yield client


async def test_fork_truncate_pop_and_compact(memory: MemoryClient) -> None:
    await memory.append_messages("t", [{"role": "user", "content": f"m{i}"} for i in range(1, 7)])
    fork = await memory.fork_thread("t", "t2", through_seq=4)
    assert (fork.parent_thread_id, fork.fork_seq, fork.message_count) == ("t", 4, 4)
    with pytest.raises(ConflictError):
        await memory.fork_thread("t", "t2")
    popped = await memory.pop_message("t")
    assert popped is not None and (popped.seq, popped.content) == (6, "m6")
    cut = await memory.truncate_thread("t", 3, expected_last_seq=6)
    assert [m.content for m in cut.removed] == ["m4", "m5"] and cut.removed_count == 2
    assert (cut.thread.message_count, cut.thread.last_seq) == (3, 6)
    with pytest.raises(ConflictError):
        await memory.truncate_thread("t", 1, expected_last_seq=5)
    thread = await memory.compact_thread("t", 2, {"role": "system", "content": "m1 and m2"})
    assert thread.compacted_through_seq == 2
    window = await memory.get_history("t", typed=True)
    assert [(m.seq, m.content, m.summarizes_through_seq) for m in window] == [(2, "m1 and m2", 2), (3, "m3", 0)]
    streamed = [m async for m in memory.stream_history("t")]
    assert [(m.seq, m.compacted) for m in streamed] == [(1, True), (2, True), (3, False)]
    with pytest.raises(FailedPreconditionError):
        await memory.compact_thread("t", 9, {"role": "system", "content": "too far"})
    assert await memory.pop_message("empty-thread") is None


async def test_the_sync_client_has_the_same_calls(api: Harness) -> None:
    def run() -> None:
        with SyncMemoryClient.connect(f"127.0.0.1:{api.app.port}", workspace_id=api.ws) as memory:
            memory.append_messages("s", [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
            assert memory.fork_thread("s", "s-copy").message_count == 2
            assert memory.pop_message("s").content == "b"  # type: ignore[union-attr]
            assert memory.truncate_thread("s", 0).removed_count == 1
            assert memory.compact_thread("s-copy", 1, {"role": "system", "content": "a"}).compacted_through_seq == 1

    await asyncio.to_thread(run)
