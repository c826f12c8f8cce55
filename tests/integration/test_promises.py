"""DESIGN.md §3 promises 2 to 5 against real Redis and real stores, looking at Redis directly."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from google.protobuf import duration_pb2

from chatmem.v1 import resources_pb2 as r
from chatmem.v1 import thread_memory_service_pb2 as pb
from server.storage.models import ThreadKey
from server.storage.redis.keys import KeySpace
from tests.conftest import Harness, exchange, msg

pytestmark = pytest.mark.integration

WINDOW = 50


async def fill_thread(h: Harness, thread: str, exchanges: int, **first: object) -> None:
    for i in range(exchanges):
        await h.threads.AppendMessages(
            pb.AppendMessagesRequest(
                workspace_id=h.ws, thread_id=thread, messages=exchange(i), **(first if i == 0 else {})
            )  # type: ignore[arg-type]
        )


async def window(h: Harness, thread: str) -> pb.GetHistoryResponse:
    return await h.threads.GetHistory(pb.GetHistoryRequest(workspace_id=h.ws, thread_id=thread))


async def full_history(h: Harness, thread: str) -> list[r.Message]:
    req = pb.StreamHistoryRequest(workspace_id=h.ws, thread_id=thread)
    return [m async for c in h.threads.StreamHistory(req) for m in c.messages]


def seqs(resp: pb.GetHistoryResponse) -> list[int]:
    return [m.seq for m in resp.messages]


async def test_reads_are_served_from_the_cache_once_warm(cached: Harness) -> None:
    await fill_thread(cached, "t", 40)
    got = await window(cached, "t")
    assert got.serving.tier == r.TIER_CACHE and not got.serving.degraded
    assert seqs(got) == list(range(31, 81))


async def test_promise3_flushed_redis_is_hydrated_with_the_exact_window(
    cached: Harness, redis_client: aioredis.Redis
) -> None:
    await fill_thread(cached, "t", 40)
    expected = seqs(await window(cached, "t"))
    await cached.drained()  # in write_behind, wiping Redis before the flush would lose QUEUED writes by design
    await redis_client.flushall()
    cold = await window(cached, "t")
    assert cold.serving.tier == r.TIER_STORE
    assert seqs(cold) == expected == list(range(31, 81))
    warm = await window(cached, "t")
    assert warm.serving.tier == r.TIER_CACHE
    assert seqs(warm) == expected
    assert [m.content for m in warm.messages] == [m.content for m in cold.messages]


async def test_promise3_an_append_to_an_expired_thread_leaves_no_partial_window(
    cached: Harness, redis_client: aioredis.Redis, keys: KeySpace
) -> None:
    await fill_thread(cached, "t", 40, ttl=duration_pb2.Duration(seconds=1))
    k = keys.thread(cached.ws, "t")
    assert await redis_client.exists(k.msgs)
    await asyncio.sleep(2.2)
    assert not await redis_client.exists(k.msgs, k.meta), "the cache TTL should have expired the window"
    await cached.threads.AppendMessages(
        pb.AppendMessagesRequest(workspace_id=cached.ws, thread_id="t", messages=exchange(99))
    )
    # The append must not have created a list holding only the new messages.
    assert not await redis_client.exists(k.msgs)
    got = await window(cached, "t")
    assert got.serving.tier == r.TIER_STORE
    assert seqs(got) == list(range(33, 83))
    assert seqs(await window(cached, "t")) == list(range(33, 83))


async def test_promise3_an_evicted_list_with_surviving_metadata_is_a_miss(
    cached: Harness, redis_client: aioredis.Redis, keys: KeySpace
) -> None:
    await fill_thread(cached, "t", 30)
    await window(cached, "t")
    k = keys.thread(cached.ws, "t")
    await cached.drained()
    await redis_client.delete(k.msgs)  # as an LRU eviction of one key would
    await cached.threads.AppendMessages(
        pb.AppendMessagesRequest(workspace_id=cached.ws, thread_id="t", messages=exchange(77))
    )
    assert not await redis_client.exists(k.msgs)
    got = await window(cached, "t")
    assert got.serving.tier == r.TIER_STORE
    assert seqs(got) == list(range(13, 63))


async def test_promise3_read_your_writes_under_interleaving(cached: Harness, redis_client: aioredis.Redis) -> None:
    for i in range(60):
        resp = await cached.threads.AppendMessages(
            pb.AppendMessagesRequest(workspace_id=cached.ws, thread_id="t", messages=[msg(f"m{i}")])
        )
        if i % 17 == 0:
            await cached.drained()
            await redis_client.flushall()
        got = await window(cached, "t")
        assert got.messages[-1].seq == resp.seqs[-1]
        assert got.messages[-1].content == f"m{i}"
        assert seqs(got) == list(range(max(1, i + 2 - WINDOW), i + 2))


async def test_promise2_concurrent_clients_with_cache_flushes_keep_order(
    cached: Harness, redis_client: aioredis.Redis, keys: KeySpace
) -> None:
    acked: dict[int, str] = {}

    async def client(c: int) -> None:
        last = 0
        for i in range(15):
            resp = await cached.threads.AppendMessages(
                pb.AppendMessagesRequest(workspace_id=cached.ws, thread_id="hot", messages=[msg(f"{c}:{i}")])
            )
            (seq,) = resp.seqs
            assert seq > last, "a client's own acknowledged seqs must increase"
            last = seq
            acked[seq] = f"{c}:{i}"
            got = await window(cached, "hot")
            assert seq in seqs(got) or seq < got.messages[0].seq, "read-your-writes"

    async def flusher() -> None:
        for _ in range(5):
            await asyncio.sleep(0.05)
            if cached.app.repository.write_behind:
                # In write_behind the counter and the outbox are state, not cache (Redis must not evict
                # them: maxmemory-policy noeviction), so only the window may go.
                await redis_client.delete(keys.thread(cached.ws, "hot").msgs)
            else:
                await redis_client.flushall()

    await asyncio.gather(*(client(c) for c in range(6)), flusher())
    history = await full_history(cached, "hot")
    assert [m.seq for m in history] == list(range(1, 91))
    assert {m.seq: m.content for m in history} == acked
    assert seqs(await window(cached, "hot")) == list(range(41, 91))


async def test_promise4_concurrent_retries_with_one_request_id_store_once(api: Harness) -> None:
    req = pb.AppendMessagesRequest(workspace_id=api.ws, thread_id="t", messages=exchange(1), request_id="same")
    results = await asyncio.gather(*(api.threads.AppendMessages(req) for _ in range(8)))
    assert {tuple(x.seqs) for x in results} == {(1, 2)}
    assert sum(not x.replayed for x in results) == 1
    assert [m.seq for m in await full_history(api, "t")] == [1, 2]


async def test_promise5_cache_expiry_is_not_deletion(
    cached: Harness, redis_client: aioredis.Redis, keys: KeySpace
) -> None:
    await fill_thread(cached, "t", 30, ttl=duration_pb2.Duration(seconds=1))
    k = keys.thread(cached.ws, "t")
    await asyncio.sleep(2.2)
    assert not await redis_client.exists(k.msgs, k.meta)
    assert len(await full_history(cached, "t")) == 60
    got = await window(cached, "t")
    assert seqs(got) == list(range(11, 61))
    thread = await cached.threads.GetThread(pb.GetThreadRequest(workspace_id=cached.ws, thread_id="t"))
    assert thread.thread.message_count == 60


async def test_pinned_windows_do_not_expire_and_ttl_changes_apply(
    cached: Harness, redis_client: aioredis.Redis, keys: KeySpace
) -> None:
    await fill_thread(cached, "t", 3)
    k = keys.thread(cached.ws, "t")
    assert 0 < await redis_client.ttl(k.msgs) <= 24 * 3600
    await cached.threads.UpdateThread(pb.UpdateThreadRequest(workspace_id=cached.ws, thread_id="t", pinned=True))
    assert await redis_client.ttl(k.msgs) == -1
    await cached.threads.UpdateThread(
        pb.UpdateThreadRequest(
            workspace_id=cached.ws, thread_id="t", pinned=False, ttl=duration_pb2.Duration(seconds=90)
        )
    )
    assert 0 < await redis_client.ttl(k.msgs) <= 90


async def test_delete_removes_the_cached_window_and_fences_late_fills(
    cached: Harness, redis_client: aioredis.Redis, keys: KeySpace
) -> None:
    await fill_thread(cached, "t", 5)
    await window(cached, "t")
    k = keys.thread(cached.ws, "t")
    thread_before = await cached.app.store.threads.get_thread(ThreadKey(cached.ws, "t"))
    assert thread_before is not None
    await cached.threads.DeleteThread(pb.DeleteThreadRequest(workspace_id=cached.ws, thread_id="t"))
    assert not await redis_client.exists(k.msgs)
    # A hydration that read the store before the delete and writes after it must not land.
    assert cached.app.cache is not None
    landed = await cached.app.cache.fill_window(thread_before, [b"stale"])
    assert landed is False
    assert not await redis_client.exists(k.msgs)
    assert list((await window(cached, "t")).messages) == []


async def test_keys_of_a_thread_share_one_hash_slot(
    cached: Harness, redis_client: aioredis.Redis, keys: KeySpace
) -> None:
    await fill_thread(cached, "t", 1)
    names = [n.decode() for n in await redis_client.keys(f"*{cached.ws}/t:*")]
    assert sorted(names) == sorted([keys.thread(cached.ws, "t").msgs, keys.thread(cached.ws, "t").meta])
    tags = {n[n.index("{") : n.index("}") + 1] for n in names}
    assert len(tags) == 1


async def test_appends_racing_deletes_never_fail_internally(api: Harness) -> None:
    import grpc

    async def append_one(i: int) -> None:
        try:
            await api.threads.AppendMessages(
                pb.AppendMessagesRequest(workspace_id=api.ws, thread_id="race", messages=[msg(f"m{i}")])
            )
        except grpc.aio.AioRpcError as exc:  # pragma: no cover - the assertion below is the test
            raise AssertionError(f"append failed with {exc.code()}: {exc.details()}") from exc

    async def delete_one() -> None:
        await api.threads.DeleteThread(
            pb.DeleteThreadRequest(workspace_id=api.ws, thread_id="race", allow_missing=True)
        )

    for round_ in range(15):
        await asyncio.gather(*(append_one(round_ * 10 + i) for i in range(8)), delete_one(), delete_one())
    await api.drained()
    history = await full_history(api, "race")
    assert [m.seq for m in history] == list(range(1, len(history) + 1))


async def test_write_behind_warns_loudly_at_start_when_redis_has_no_aof(
    redis_proc: object, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.conftest import make_settings, start_harness

    with caplog.at_level("WARNING", logger="server.app"):
        h = await start_harness(make_settings(redis_url=redis_proc.url))  # type: ignore[attr-defined]
    try:
        assert h.app.repository.write_behind
        assert any("WITHOUT AOF" in r.getMessage() for r in caplog.records)
    finally:
        await h.close()


async def test_a_full_read_of_a_busy_thread_is_not_starved_by_later_appends(cached: Harness) -> None:
    stop = asyncio.Event()

    async def writer() -> None:
        for i in range(2000):  # bounded; stops as soon as the reads are done
            if stop.is_set():
                return
            await cached.threads.AppendMessages(
                pb.AppendMessagesRequest(workspace_id=cached.ws, thread_id="busy", messages=[msg(f"w{i}")])
            )

    await fill_thread(cached, "busy", 5)
    task = asyncio.ensure_future(writer())
    try:
        for _ in range(10):
            before = await cached.threads.GetHistory(pb.GetHistoryRequest(workspace_id=cached.ws, thread_id="busy"))
            page = await cached.threads.ListMessages(
                pb.ListMessagesRequest(workspace_id=cached.ws, thread_id="busy", page_size=1000), timeout=5
            )
            # Everything acknowledged before the read began is there.
            assert [m.seq for m in page.messages][: before.messages[-1].seq] == list(
                range(1, before.messages[-1].seq + 1)
            )
    finally:
        stop.set()
        await task
