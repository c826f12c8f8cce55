"""AdminService.DeleteUser on every backend: both tiers emptied, others untouched, nothing back from the outbox."""

from __future__ import annotations

import asyncio
import logging
import pathlib
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
import redis.asyncio as aioredis

from chatmem import MemoryClient, SyncMemoryClient
from chatmem.v1 import admin_service_pb2 as apb
from chatmem.v1 import admin_service_pb2_grpc
from chatmem.v1 import preferences_service_pb2 as ppb
from chatmem.v1 import resources_pb2 as r
from chatmem.v1 import thread_memory_service_pb2 as pb
from devtools.postgres import PostgresProcess
from devtools.redis import RedisProcess
from server.storage.local_cache import LocalCache
from server.storage.models import ThreadKey
from server.storage.redis.keys import KeySpace
from server.storage.redis.outbox import Flusher
from tests import store_rows
from tests.conftest import Harness, exchange, make_settings, msg, start_harness
from tests.integration.conftest import backend_settings

pytestmark = pytest.mark.integration


def admin(h: Harness) -> admin_service_pb2_grpc.AdminServiceStub:
    return admin_service_pb2_grpc.AdminServiceStub(h.channel)


async def delete_user(h: Harness, user: str, ws: str | None = None) -> apb.DeleteUserResponse:
    return await admin(h).DeleteUser(apb.DeleteUserRequest(workspace_id=h.ws if ws is None else ws, user_id=user))


async def append(h: Harness, thread: str, n: int, user: str = "", ws: str | None = None) -> pb.AppendMessagesResponse:
    messages = [m for i in range(n // 2) for m in exchange(i)] + ([msg("odd")] if n % 2 else [])
    return await h.threads.AppendMessages(
        pb.AppendMessagesRequest(
            workspace_id=h.ws if ws is None else ws, thread_id=thread, messages=messages, user_id=user
        )
    )


async def set_prefs(h: Harness, user: str, values: dict[str, str], ws: str | None = None) -> None:
    await h.prefs.SetPreferences(
        ppb.SetPreferencesRequest(workspace_id=h.ws if ws is None else ws, user_id=user, preferences=values)
    )


async def history_seqs(h: Harness, thread: str, ws: str | None = None) -> list[int]:
    got = await h.threads.GetHistory(pb.GetHistoryRequest(workspace_id=h.ws if ws is None else ws, thread_id=thread))
    return [m.seq for m in got.messages]


async def prefs_of(h: Harness, user: str, ws: str | None = None) -> dict[str, str]:
    got = await h.prefs.GetPreferences(ppb.GetPreferencesRequest(workspace_id=h.ws if ws is None else ws, user_id=user))
    return {p.key: p.value for p in got.preferences}


async def thread_code(h: Harness, thread: str) -> grpc.StatusCode:
    try:
        await h.threads.GetThread(pb.GetThreadRequest(workspace_id=h.ws, thread_id=thread))
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def redis_leftovers(h: Harness, thread: str) -> list[str]:
    """The Redis state a deleted thread must not keep: its window, request ids, a live meta, a pending marker."""
    url = h.app.settings.redis.url
    assert url is not None
    k = KeySpace(h.app.settings.redis.key_prefix).thread(h.ws, thread)
    client = aioredis.Redis.from_url(url)
    try:
        found = [key for key in (k.msgs, k.reqs) if await client.exists(key)]
        meta = await client.hgetall(k.meta)
        if meta and b"del" not in meta:
            found.append(f"{k.meta} (live: {sorted(meta)})")
        if await client.hexists(k.pending, k.field):
            found.append(f"{k.pending}[{k.field}]")
        return found
    finally:
        await client.aclose()


async def test_delete_user_erases_both_tiers_and_nothing_else(api: Harness, caplog: pytest.LogCaptureFixture) -> None:
    other_ws = f"ws-{uuid.uuid4().hex[:12]}"
    for thread, n in (("a1", 4), ("a2", 3), ("a3", 2)):
        await append(api, thread, n, user="alice")
    await append(api, "b1", 2, user="bob")
    await append(api, "a1", 2, user="alice", ws=other_ws)
    await set_prefs(api, "alice", {"lang": "fr", "tz": "CET"})
    await set_prefs(api, "bob", {"lang": "en"})
    await set_prefs(api, "alice", {"lang": "de"}, ws=other_ws)
    await api.drained()
    # Warm the cache: windows and the preferences hash are in Redis now (on the cached backends).
    assert await history_seqs(api, "a1") == [1, 2, 3, 4]
    assert await prefs_of(api, "alice") == {"lang": "fr", "tz": "CET"}

    with caplog.at_level(logging.INFO, logger="chatmem.audit"):
        out = await delete_user(api, "alice")
    assert (out.deleted_threads, out.deleted_messages, out.deleted_preferences) == (3, 9, 2)
    audits = [rec for rec in caplog.records if rec.name == "chatmem.audit"]
    assert [(rec.action, rec.workspace_id, rec.user_id, rec.deleted_threads) for rec in audits] == [
        ("delete_user", api.ws, "alice", 3)
    ]
    assert "fr" not in audits[0].getMessage() and "question" not in audits[0].getMessage()

    for thread in ("a1", "a2", "a3"):
        assert await thread_code(api, thread) == grpc.StatusCode.NOT_FOUND
        assert await history_seqs(api, thread) == []
        assert await store_rows.seqs(api, api.ws, thread) == []
        if api.app.settings.redis.enabled:
            assert await redis_leftovers(api, thread) == []
        elif isinstance(api.app.cache, LocalCache):  # the embedded mode's in-process cache
            assert ThreadKey(api.ws, thread) not in api.app.cache
    listed = await api.threads.ListThreads(pb.ListThreadsRequest(workspace_id=api.ws, user_id="alice"))
    assert list(listed.threads) == []
    assert await prefs_of(api, "alice") == {}
    assert await store_rows.threads(api, api.ws, "alice") == []
    assert await store_rows.preference_keys(api, api.ws, "alice") == []

    # Another user, and the same user in another workspace, keep everything.
    assert await history_seqs(api, "b1") == [1, 2]
    assert await prefs_of(api, "bob") == {"lang": "en"}
    assert await history_seqs(api, "a1", ws=other_ws) == [1, 2]
    assert await prefs_of(api, "alice", ws=other_ws) == {"lang": "de"}
    assert await store_rows.threads(api, other_ws, "alice") == ["a1"]

    again = await delete_user(api, "alice")
    assert (again.deleted_threads, again.deleted_messages, again.deleted_preferences) == (0, 0, 0)
    # The thread id is free again: a new append starts a new thread from seq 1.
    assert list((await append(api, "a1", 1, user="alice")).seqs) == [1]


async def test_delete_user_pages_through_many_threads(api: Harness) -> None:
    for i in range(205):  # more than one page of the servicer's 200
        await append(api, f"t{i:03d}", 1, user="carol")
    out = await delete_user(api, "carol")
    assert out.deleted_threads == 205
    assert await store_rows.threads(api, api.ws, "carol") == []


async def test_delete_user_validates_its_request(sqlite_api: Harness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await delete_user(sqlite_api, "")
    assert missing.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "user_id" in str(missing.value.details())
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await admin(sqlite_api).DeleteUser(apb.DeleteUserRequest(workspace_id="{x}", user_id="u"))
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(params=["postgres+redis", "sqlite+redis"])
async def queued(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> AsyncIterator[Harness]:
    """A write_behind server on each store."""
    h = await start_harness(backend_settings(request, request.param, tmp_path))
    assert h.app.repository.write_behind
    yield h
    await h.close()


def second_flusher(h: Harness, client: aioredis.Redis) -> Flusher:
    """A flusher like the server's own, as another replica would run."""
    return Flusher(
        client,
        KeySpace(h.app.settings.redis.key_prefix),
        h.app.store.outbox,
        consumer="replica-2",
        batch_size=100,
        block_ms=20,
        claim_idle_ms=200,
        claim_interval_s=0.1,
        cluster=False,
        store_health=h.app.repository.store_health,
    )


async def test_appends_still_in_the_outbox_never_come_back(queued: Harness, redis_proc: RedisProcess) -> None:
    h = queued
    await append(h, "a1", 2, user="alice")
    await h.drained()
    assert h.app.flusher is not None
    await h.app.flusher.stop(5.0)  # the store keeps running; only the flush is held back
    acked = await append(h, "a1", 3)
    fresh = await append(h, "a2", 2, user="alice")  # a new thread: its row exists, its messages are queued
    assert acked.durability == fresh.durability == r.DURABILITY_QUEUED
    assert await h.app.flusher.depth() > 0

    out = await delete_user(h, "alice")
    assert out.deleted_threads == 2
    assert out.deleted_messages == 2, "only the flushed messages were in the store"

    client = aioredis.Redis.from_url(redis_proc.url)
    flusher = second_flusher(h, client)
    await flusher.start()
    try:
        for _ in range(500):
            if await flusher.depth() == 0:
                break
            await asyncio.sleep(0.02)
        assert await flusher.depth() == 0, "the outbox did not drain"
        assert flusher.flushed_entries == 2 and flusher.flushed_messages == 0, "flushed, but skipped as deleted"
    finally:
        await flusher.stop(2.0)
        await client.aclose()
    for thread in ("a1", "a2"):
        assert await store_rows.seqs(h, h.ws, thread) == []
        assert await history_seqs(h, thread) == []
        assert await thread_code(h, thread) == grpc.StatusCode.NOT_FOUND
    assert await store_rows.threads(h, h.ws, "alice") == []


async def test_with_the_store_down_delete_user_is_unavailable_then_completes(
    own_pg: PostgresProcess, redis_proc: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    h = await start_harness(make_settings(database_url=own_pg.url, redis_url=redis_proc.url))
    try:
        await append(h, "a1", 2, user="alice")
        await set_prefs(h, "alice", {"lang": "fr"})
        await h.drained()
        own_pg.kill()
        queued_while_down = await append(h, "a1", 2)  # Redis counts a1, so this is queued without the store
        assert queued_while_down.durability == r.DURABILITY_QUEUED
        with caplog.at_level(logging.INFO, logger="chatmem.audit"), pytest.raises(grpc.aio.AioRpcError) as down:
            await admin(h).DeleteUser(apb.DeleteUserRequest(workspace_id=h.ws, user_id="alice"), timeout=10)
        assert down.value.code() == grpc.StatusCode.UNAVAILABLE
        failed = [rec for rec in caplog.records if rec.name == "chatmem.audit"]
        assert [(rec.action, rec.outcome, rec.user_id) for rec in failed] == [
            ("delete_user", "failed: StoreDownError", "alice")
        ]
        own_pg.start()
        out = None
        for _ in range(100):  # the pool reconnects on its own; retry as a client would
            try:
                out = await delete_user(h, "alice")
                break
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE
                await asyncio.sleep(0.1)
        assert out is not None and out.deleted_threads == 1 and out.deleted_preferences == 1
        await h.drained()
        assert await store_rows.seqs(h, h.ws, "a1") == []
        assert await store_rows.threads(h, h.ws) == []
        assert await history_seqs(h, "a1") == []
        assert await prefs_of(h, "alice") == {}
    finally:
        await h.close()


async def test_the_clients_delete_user(api: Harness) -> None:
    async with MemoryClient.connect(f"127.0.0.1:{api.app.port}", workspace_id=api.ws) as memory:
        await memory.append("c1", "user", "hello", user_id="dave")
        await memory.set_preferences("dave", {"lang": "fr"})
        await api.drained()
        gone = await memory.delete_user("dave")
        assert (gone.threads, gone.messages, gone.preferences) == (1, 1, 1)
        assert gone.serving.tier == "store"
        assert await memory.get_history("c1") == []

    def blocking() -> tuple[int, int, int]:
        with SyncMemoryClient.connect(f"127.0.0.1:{api.app.port}", workspace_id=api.ws) as memory:
            memory.append("c2", "user", "hi", user_id="erin")
            memory.append("c3", "user", "hi", user_id="erin")
            done = memory.delete_user("erin")
            return done.threads, done.preferences, len(memory.list_threads("erin").collect())

    assert await asyncio.to_thread(blocking) == (2, 0, 0)
