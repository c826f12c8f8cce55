"""The embedded default's in-process window cache, through the gRPC server on an SQLite file and no Redis.

Every read of the window is compared with the store's own answer for the same thread: GetHistory with a
limit past the window, which the repository always reads from the store (its newest ``WINDOW`` messages are
the window view, compaction summary included). Reads that the cache answers say TIER_CACHE; after the
store is closed they must still answer, which shows that they read nothing from it.
"""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import duration_pb2

from chatmem.v1 import admin_service_pb2 as apb
from chatmem.v1 import admin_service_pb2_grpc
from chatmem.v1 import preferences_service_pb2 as ppb
from chatmem.v1 import resources_pb2 as r
from chatmem.v1 import thread_memory_service_pb2 as pb
from server.app import create_server
from server.storage.erasure import Eraser
from server.storage.file_claim import FileInUseError
from server.storage.local_cache import LocalCache
from server.storage.models import ThreadKey
from server.storage.retention import Sweeper
from tests import store_rows
from tests.conftest import Harness, make_settings, msg, start_harness

pytestmark = pytest.mark.integration

WINDOW = 5
CAP = 3


@pytest.fixture
async def lite(tmp_path: pathlib.Path) -> AsyncIterator[Harness]:
    """A server on an SQLite file with no Redis: the in-process cache, keeping at most CAP threads."""
    settings = make_settings(
        sqlite_path=str(tmp_path / "chatmem.db"), max_thread_messages=WINDOW, local_cache_threads=CAP
    )
    h = await start_harness(settings)
    yield h
    await h.close()


def local(h: Harness) -> LocalCache:
    assert isinstance(h.app.cache, LocalCache), "SQLite without Redis must run the in-process cache"
    return h.app.cache


async def append(h: Harness, thread: str, *contents: str, **kw: object) -> pb.AppendMessagesResponse:
    messages = [msg(c) for c in contents]
    return await h.threads.AppendMessages(
        pb.AppendMessagesRequest(workspace_id=h.ws, thread_id=thread, messages=messages, **kw)  # type: ignore[arg-type]
    )


async def fill(h: Harness, thread: str, n: int, tag: str = "m") -> None:
    for first in range(1, n + 1, 3):
        await append(h, thread, *(f"{tag}{i}" for i in range(first, min(first + 3, n + 1))))


async def read(h: Harness, thread: str, limit: int = WINDOW) -> pb.GetHistoryResponse:
    return await h.threads.GetHistory(pb.GetHistoryRequest(workspace_id=h.ws, thread_id=thread, limit=limit))


def view(response: pb.GetHistoryResponse) -> list[tuple[int, str, bool]]:
    return [(m.seq, m.content, m.compacted) for m in response.messages]


async def store_view(h: Harness, thread: str, limit: int = WINDOW) -> list[tuple[int, str, bool]]:
    """The newest ``limit`` of the window view as the store answers it (a read past the window)."""
    past = await read(h, thread, limit=WINDOW + 20)
    assert past.serving.tier == r.TIER_STORE
    return view(past)[-limit:] if limit else []


async def assert_exact(h: Harness, thread: str) -> None:
    """The window read twice (a miss fills, then a hit) and at a smaller limit equals the store's view."""
    expected = await store_view(h, thread)
    first = await read(h, thread)
    assert view(first) == expected
    if expected:
        # A miss answers from the store and fills in the background: the read after it must hit.
        for _ in range(50):
            again = await read(h, thread)
            if again.serving.tier == r.TIER_CACHE:
                break
            await asyncio.sleep(0.01)
        assert again.serving.tier == r.TIER_CACHE and not again.serving.degraded
        assert view(again) == expected
        assert view(await read(h, thread, 2)) == expected[-2:] == await store_view(h, thread, 2)


async def test_appends_are_served_from_the_cache_exactly(lite: Harness) -> None:
    await fill(lite, "t", 4)
    got = await read(lite, "t")
    assert got.serving.tier == r.TIER_CACHE, "a thread created here is cached from its first append"
    assert view(got) == await store_view(lite, "t") == [(i, f"m{i}", False) for i in range(1, 5)]
    await append(lite, "t", "a", "b", "c")
    got = await read(lite, "t")
    assert got.serving.tier == r.TIER_CACHE
    tail = [(3, "m3", False), (4, "m4", False), (5, "a", False), (6, "b", False), (7, "c", False)]
    assert view(got) == await store_view(lite, "t") == tail
    await assert_exact(lite, "t")


async def test_truncate_fork_and_compact_leave_the_cache_exact(lite: Harness) -> None:
    await fill(lite, "t", 9)
    await assert_exact(lite, "t")
    await lite.threads.TruncateThread(pb.TruncateThreadRequest(workspace_id=lite.ws, thread_id="t", after_seq=6))
    await assert_exact(lite, "t")
    assert [s for s, _, _ in view(await read(lite, "t"))] == [2, 3, 4, 5, 6]
    await append(lite, "t", "after-truncate")
    await assert_exact(lite, "t")
    assert view(await read(lite, "t"))[-1] == (10, "after-truncate", False)

    await lite.threads.ForkThread(
        pb.ForkThreadRequest(workspace_id=lite.ws, thread_id="t", new_thread_id="f", through_seq=4)
    )
    await assert_exact(lite, "f")
    assert [c for _, c, _ in view(await read(lite, "f"))] == ["m1", "m2", "m3", "m4"]
    await assert_exact(lite, "t")

    summary = msg("summary of 1-8", r.ROLE_SYSTEM)
    await lite.threads.CompactThread(
        pb.CompactThreadRequest(workspace_id=lite.ws, thread_id="t", through_seq=5, summary=summary)
    )
    await assert_exact(lite, "t")
    assert view(await read(lite, "t"))[0][1] == "summary of 1-8"
    await append(lite, "t", "x1", "x2", "x3")
    await assert_exact(lite, "t")
    assert all(c != "summary of 1-8" for _, c, _ in view(await read(lite, "t")))


async def test_delete_and_erasure_remove_threads_from_the_cache(lite: Harness) -> None:
    await fill(lite, "d", 3)
    await append(lite, "u1", "one", user_id="alice")
    await append(lite, "u2", "two", user_id="alice")
    for thread in ("d", "u1", "u2"):
        assert (await read(lite, thread)).serving.tier == r.TIER_CACHE
    await lite.threads.DeleteThread(pb.DeleteThreadRequest(workspace_id=lite.ws, thread_id="d"))
    assert ThreadKey(lite.ws, "d") not in local(lite)
    assert view(await read(lite, "d")) == []
    assert list((await append(lite, "d", "again")).seqs) == [1]
    assert view(await read(lite, "d")) == [(1, "again", False)]

    admin = admin_service_pb2_grpc.AdminServiceStub(lite.channel)
    await admin.DeleteUser(apb.DeleteUserRequest(workspace_id=lite.ws, user_id="alice"))
    for thread in ("u1", "u2"):
        assert ThreadKey(lite.ws, thread) not in local(lite)
        assert view(await read(lite, thread)) == []


async def test_a_retention_trim_drops_the_cached_window(lite: Harness) -> None:
    await fill(lite, "r", 4)
    assert (await read(lite, "r")).serving.tier == r.TIER_CACHE
    await store_rows.backdate_messages(lite, lite.ws, "r", 2, 10)
    sweeper = Sweeper(
        Eraser(lite.app.repository, lite.app.store.retention),
        lite.app.store.retention,
        retention_s=86400,
        interval_s=3600,
        batch=100,
    )
    assert (await sweeper.sweep_once()).messages == 2
    await assert_exact(lite, "r")
    assert [s for s, _, _ in view(await read(lite, "r"))] == [3, 4]


async def test_the_lru_bound_holds_and_evicted_threads_read_from_the_store(lite: Harness) -> None:
    threads = [f"lru{i}" for i in range(2 * CAP)]
    for t in threads:
        await fill(lite, t, 7, tag=f"{t}-")
    assert len(local(lite)) <= CAP
    assert local(lite).evictions >= len(threads) - CAP
    for _ in range(2):
        for t in threads:
            await assert_exact(lite, t)
            assert len(local(lite)) <= CAP
    tiers = [(await read(lite, t)).serving.tier for t in threads]
    assert r.TIER_STORE in tiers, "with more threads than the cap some must have been evicted"


async def test_a_window_expires_with_its_ttl(lite: Harness) -> None:
    await append(lite, "ttl", "a", "b", ttl=duration_pb2.Duration(seconds=1))
    assert (await read(lite, "ttl")).serving.tier == r.TIER_CACHE
    await asyncio.sleep(1.2)
    cold = await read(lite, "ttl")
    assert cold.serving.tier == r.TIER_STORE and view(cold) == [(1, "a", False), (2, "b", False)]


async def test_warm_reads_need_no_store(lite: Harness) -> None:
    await fill(lite, "w", 8)
    await lite.prefs.SetPreferences(
        ppb.SetPreferencesRequest(workspace_id=lite.ws, user_id="bob", preferences={"lang": "fr"})
    )
    context = pb.GetContextRequest(workspace_id=lite.ws, thread_id="w", user_id="bob")
    budgeted = pb.GetHistoryRequest(workspace_id=lite.ws, thread_id="w", max_tokens=3)
    warm_context = await lite.threads.GetContext(context)
    warm_budgeted = await lite.threads.GetHistory(budgeted)
    expected = view(await read(lite, "w"))

    await lite.app.store.close()  # every store call is UNAVAILABLE from here on
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await lite.threads.ListMessages(pb.ListMessagesRequest(workspace_id=lite.ws, thread_id="w"))
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE

    got = await read(lite, "w")
    assert view(got) == expected and got.serving.tier == r.TIER_CACHE
    again = await lite.threads.GetContext(context)
    assert again.context == warm_context.context and "lang: fr" in again.context
    assert again.serving.tier == r.TIER_CACHE
    within = await lite.threads.GetHistory(budgeted)
    assert view(within) == view(warm_budgeted) and within.serving.tier == r.TIER_CACHE


async def test_a_cap_of_zero_turns_the_cache_off(tmp_path: pathlib.Path) -> None:
    h = await start_harness(make_settings(sqlite_path=str(tmp_path / "off.db"), local_cache_threads=0))
    try:
        assert h.app.cache is None
        await append(h, "t", "a")
        got = await read(h, "t")
        assert got.serving.tier == r.TIER_STORE and view(got) == [(1, "a", False)]
    finally:
        await h.close()


async def test_a_second_server_on_the_same_file_is_refused_until_the_first_stops(tmp_path: pathlib.Path) -> None:
    # Its writes would change windows behind the first server's in-process cache.
    settings = make_settings(sqlite_path=str(tmp_path / "chatmem.db"), max_thread_messages=WINDOW)
    first = await start_harness(settings)
    try:
        await append(first, "t", "hello")
        with pytest.raises(FileInUseError, match="already serves"):
            await create_server(settings)
    finally:
        await first.close()
    second = await start_harness(settings)  # the first one gave the file up when it stopped
    try:
        got = await second.threads.GetHistory(pb.GetHistoryRequest(workspace_id=first.ws, thread_id="t"))
        assert view(got) == [(1, "hello", False)]
    finally:
        await second.close()
