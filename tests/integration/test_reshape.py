"""ForkThread, TruncateThread and CompactThread on every backend, alone and under concurrent appends."""

from __future__ import annotations

import asyncio

import grpc
import pytest
import redis.asyncio as aioredis

from chatmem.v1 import resources_pb2 as r
from chatmem.v1 import thread_memory_service_pb2 as pb
from server.storage.redis.keys import KeySpace
from tests.conftest import Harness, msg

pytestmark = pytest.mark.integration


async def append(h: Harness, thread: str, *messages: r.MessageInput, **kw: object) -> pb.AppendMessagesResponse:
    return await h.threads.AppendMessages(
        pb.AppendMessagesRequest(workspace_id=h.ws, thread_id=thread, messages=messages, **kw)  # type: ignore[arg-type]
    )


async def fill(h: Harness, thread: str, n: int, start: int = 1) -> None:
    for first in range(start, start + n, 20):
        batch = [msg(f"m{i}", message_id=f"id{i}") for i in range(first, min(first + 20, start + n))]
        await append(h, thread, *batch)


async def window(h: Harness, thread: str, limit: int = 0) -> list[r.Message]:
    got = await h.threads.GetHistory(pb.GetHistoryRequest(workspace_id=h.ws, thread_id=thread, limit=limit))
    return list(got.messages)


async def listed(h: Harness, thread: str) -> list[r.Message]:
    out: list[r.Message] = []
    token = ""
    while True:
        page = await h.threads.ListMessages(
            pb.ListMessagesRequest(workspace_id=h.ws, thread_id=thread, page_size=7, page_token=token)
        )
        out += page.messages
        token = page.next_page_token
        if not token:
            return out


async def streamed(h: Harness, thread: str) -> list[r.Message]:
    request = pb.StreamHistoryRequest(workspace_id=h.ws, thread_id=thread, chunk_size=5)
    return [m async for chunk in h.threads.StreamHistory(request) for m in chunk.messages]


async def thread_of(h: Harness, thread: str) -> r.Thread:
    return (await h.threads.GetThread(pb.GetThreadRequest(workspace_id=h.ws, thread_id=thread))).thread


async def test_fork_copies_up_to_a_seq_with_its_own_seqs(api: Harness) -> None:
    await fill(api, "src", 12)
    forked = await api.threads.ForkThread(
        pb.ForkThreadRequest(workspace_id=api.ws, thread_id="src", new_thread_id="fork", through_seq=8)
    )
    assert (forked.copied_messages, forked.replayed) == (8, False)
    assert (forked.thread.parent_thread_id, forked.thread.fork_seq, forked.thread.message_count) == ("src", 8, 8)
    for read in (await window(api, "fork"), await listed(api, "fork"), await streamed(api, "fork")):
        assert [(m.seq, m.content, m.message_id, m.thread_id) for m in read] == [
            (i, f"m{i}", f"id{i}", "fork") for i in range(1, 9)
        ]
    # the fork lives on its own: appends continue its seqs; the source is unchanged
    assert list((await append(api, "fork", msg("new"))).seqs) == [9]
    assert [m.seq for m in await window(api, "src")] == list(range(1, 13))
    # a retry returns the same fork; another fork onto an existing id is refused
    again = await api.threads.ForkThread(
        pb.ForkThreadRequest(workspace_id=api.ws, thread_id="src", new_thread_id="fork", through_seq=8)
    )
    assert again.replayed
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await api.threads.ForkThread(pb.ForkThreadRequest(workspace_id=api.ws, thread_id="src", new_thread_id="fork"))
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    whole = await api.threads.ForkThread(
        pb.ForkThreadRequest(workspace_id=api.ws, thread_id="src", new_thread_id="all")
    )
    assert whole.copied_messages == 12 and whole.thread.fork_seq == 12


async def test_fork_of_an_unknown_thread_is_not_found(api: Harness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await api.threads.ForkThread(pb.ForkThreadRequest(workspace_id=api.ws, thread_id="none", new_thread_id="x"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_truncate_pops_and_rewinds_and_never_reuses_a_seq(api: Harness) -> None:
    await fill(api, "t", 10)
    popped = await api.threads.TruncateThread(
        pb.TruncateThreadRequest(workspace_id=api.ws, thread_id="t", after_seq=9, expected_last_seq=10)
    )
    assert [m.content for m in popped.removed] == ["m10"] and popped.removed_count == 1
    assert (popped.thread.message_count, popped.thread.last_seq) == (9, 10)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await api.threads.TruncateThread(
            pb.TruncateThreadRequest(workspace_id=api.ws, thread_id="t", after_seq=5, expected_last_seq=9)
        )
    assert caught.value.code() == grpc.StatusCode.ABORTED
    rewound = await api.threads.TruncateThread(
        pb.TruncateThreadRequest(workspace_id=api.ws, thread_id="t", after_seq=5)
    )
    assert [m.seq for m in rewound.removed] == [6, 7, 8, 9]
    # the removed ids are free again, and the next append gets a seq above every earlier one
    after = await append(api, "t", msg("again", message_id="id10"), msg("more", message_id="id7"))
    assert list(after.seqs) == [11, 12] and after.message_count == 7
    expected = [(i, f"m{i}") for i in range(1, 6)] + [(11, "again"), (12, "more")]
    for read in (await window(api, "t"), await listed(api, "t"), await streamed(api, "t")):
        assert [(m.seq, m.content) for m in read] == expected
    thread = await thread_of(api, "t")
    assert (thread.message_count, thread.last_seq) == (7, 12)


async def test_truncate_of_an_unknown_thread_is_not_found(api: Harness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await api.threads.TruncateThread(pb.TruncateThreadRequest(workspace_id=api.ws, thread_id="none"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_truncate_and_fork_under_concurrent_appends(api: Harness) -> None:
    await fill(api, "busy", 20)
    acked: list[int] = []

    async def writer() -> None:
        for i in range(40):
            acked.extend((await append(api, "busy", msg(f"w{i}"))).seqs)

    task = asyncio.create_task(writer())
    await asyncio.sleep(0.01)
    cut = await api.threads.TruncateThread(
        pb.TruncateThreadRequest(workspace_id=api.ws, thread_id="busy", after_seq=10)
    )
    forked = await api.threads.ForkThread(
        pb.ForkThreadRequest(workspace_id=api.ws, thread_id="busy", new_thread_id="busy-fork")
    )
    await task
    await api.drained()
    removed = {m.seq for m in cut.removed}
    assert cut.removed_count == len(removed)
    assert set(range(11, 21)) <= removed, "every message acknowledged before the truncate began is removed"
    survivors = [m.seq for m in await listed(api, "busy")]
    # every acknowledged seq is either removed by the truncate or still there, exactly once, in order
    assert survivors == sorted(survivors) and len(set(survivors)) == len(survivors)
    assert set(survivors) == (set(range(1, 21)) | set(acked)) - removed
    assert all(s > 10 for s in survivors[10:])
    # the fork copied a consistent prefix of the thread as it was at the fork
    copy = [m.content for m in await listed(api, "busy-fork")]
    assert len(copy) == forked.copied_messages
    contents = [m.content for m in await listed(api, "busy")]
    assert copy == contents[: len(copy)]


async def test_compaction_stands_in_for_old_messages_in_the_window_and_context(api: Harness) -> None:
    await fill(api, "c", 10)
    summary = r.MessageInput(role=r.ROLE_SYSTEM, content="The user asked about m1 to m6.")
    request = pb.CompactThreadRequest(
        workspace_id=api.ws, thread_id="c", through_seq=6, summary=summary, request_id="c1"
    )
    done = await api.threads.CompactThread(request)
    assert (done.replayed, done.thread.compacted_through_seq) == (False, 6)
    assert (await api.threads.CompactThread(request)).replayed
    got = await window(api, "c")
    assert [(m.seq, m.content, m.summarizes_through_seq) for m in got] == [
        (6, "The user asked about m1 to m6.", 6),
        *[(i, f"m{i}", 0) for i in range(7, 11)],
    ]
    context = await api.threads.GetContext(pb.GetContextRequest(workspace_id=api.ws, thread_id="c"))
    assert context.context.splitlines()[:3] == [
        "Previous conversation:",
        "system: The user asked about m1 to m6.",
        "user: m7",
    ]
    # the originals stay in the store, marked
    for read in (await listed(api, "c"), await streamed(api, "c")):
        assert [(m.seq, m.compacted) for m in read] == [(i, i <= 6) for i in range(1, 11)]
    # new messages extend the compacted window; a truncate below the compaction drops the summary
    await append(api, "c", msg("m11"))
    assert [m.seq for m in await window(api, "c")] == [6, 7, 8, 9, 10, 11]
    await api.threads.TruncateThread(pb.TruncateThreadRequest(workspace_id=api.ws, thread_id="c", after_seq=3))
    assert [m.seq for m in await window(api, "c")] == [1, 2, 3]
    assert (await thread_of(api, "c")).compacted_through_seq == 0


async def test_compaction_past_the_end_or_backwards_is_refused(api: Harness) -> None:
    await fill(api, "cc", 5)
    summary = r.MessageInput(role=r.ROLE_SYSTEM, content="s")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await api.threads.CompactThread(
            pb.CompactThreadRequest(workspace_id=api.ws, thread_id="cc", through_seq=6, summary=summary)
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    await api.threads.CompactThread(
        pb.CompactThreadRequest(workspace_id=api.ws, thread_id="cc", through_seq=4, summary=summary)
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await api.threads.CompactThread(
            pb.CompactThreadRequest(workspace_id=api.ws, thread_id="cc", through_seq=3, summary=summary)
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await api.threads.CompactThread(pb.CompactThreadRequest(workspace_id=api.ws, thread_id="cc", through_seq=4))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_compacted_window_survives_a_cache_miss(cached: Harness, redis_client: aioredis.Redis) -> None:
    await fill(cached, "cm", 8)
    summary = r.MessageInput(role=r.ROLE_ASSISTANT, parts=[r.Part(text="summary")])
    await cached.threads.CompactThread(
        pb.CompactThreadRequest(workspace_id=cached.ws, thread_id="cm", through_seq=5, summary=summary)
    )
    first = await window(cached, "cm")
    keys = KeySpace(cached.app.settings.redis.key_prefix).thread(cached.ws, "cm")
    await redis_client.delete(keys.msgs)
    assert await window(cached, "cm") == first
    assert [m.seq for m in first] == [5, 6, 7, 8] and first[0].parts[0].text == "summary"
    # once refilled, the short window of the compacted (or truncated) thread answers from the cache
    again = await cached.threads.GetHistory(pb.GetHistoryRequest(workspace_id=cached.ws, thread_id="cm"))
    assert again.serving.tier == r.TIER_CACHE and list(again.messages) == first
    await cached.threads.TruncateThread(pb.TruncateThreadRequest(workspace_id=cached.ws, thread_id="cm", after_seq=7))
    await window(cached, "cm")
    popped = await cached.threads.GetHistory(pb.GetHistoryRequest(workspace_id=cached.ws, thread_id="cm"))
    assert popped.serving.tier == r.TIER_CACHE and [m.seq for m in popped.messages] == [5, 6, 7]
