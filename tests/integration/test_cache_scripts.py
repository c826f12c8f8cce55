"""The cache's Lua scripts on a real Redis: fences against stale fills, deletes and re-creation."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from devtools.redis import RedisProcess
from server.storage.codec import frame_item
from server.storage.models import (
    PreferenceChange,
    PreferenceSet,
    PreferenceValue,
    QueuedRequest,
    Seed,
    ThreadInfo,
    ThreadKey,
    WindowRead,
)
from server.storage.redis.cache import RedisCache
from server.storage.redis.keys import KeySpace

pytestmark = pytest.mark.integration


@pytest.fixture
async def cache(redis_proc: RedisProcess) -> AsyncIterator[RedisCache]:
    client = aioredis.Redis.from_url(redis_proc.url)
    yield RedisCache(client, KeySpace(), window=5, thread_ttl_s=3600, prefs_ttl_s=3600)
    await client.aclose()


def thread(last_seq: int, incarnation: int = 1000) -> ThreadInfo:
    return ThreadInfo(f"ws-{uuid.uuid4().hex[:8]}", "t", "", "", None, False, last_seq, last_seq, incarnation, 0, 0)


def enc(*seqs: int) -> list[bytes]:
    return [f"m{s}".encode() for s in seqs]


def framed(*seqs: int) -> list[bytes]:
    """What a window read returns: the items framed as repeated field 1."""
    return [frame_item(e) for e in enc(*seqs)]


async def test_push_extends_only_a_contiguous_window_and_trims(cache: RedisCache) -> None:
    t = thread(3)
    assert await cache.push_window(t, 1, enc(1, 2, 3)) is True  # a new thread's window is complete
    t4 = dataclasses.replace(t, last_seq=7)
    assert await cache.push_window(t4, 4, enc(4, 5, 6, 7)) is True
    key = ThreadKey(t.workspace_id, t.thread_id)
    assert await cache.read_window(key, 5) == framed(3, 4, 5, 6, 7)
    assert await cache.read_window(key, 2) == framed(6, 7)
    gap = dataclasses.replace(t, last_seq=10)
    assert await cache.push_window(gap, 9, enc(9, 10)) is False  # seq 8 went missing: invalidate
    assert await cache.read_window(key, 5) is None


async def test_a_fill_older_than_a_committed_write_is_refused(cache: RedisCache) -> None:
    t = thread(5)
    key = ThreadKey(t.workspace_id, t.thread_id)
    # A reader loads seqs 1..5 from the store; before it fills, seq 6 commits and finds no window.
    assert await cache.push_window(dataclasses.replace(t, last_seq=6), 6, enc(6)) is False
    assert await cache.fill_window(t, enc(1, 2, 3, 4, 5)) is False
    assert await cache.read_window(key, 5) is None
    assert await cache.fill_window(dataclasses.replace(t, last_seq=6), enc(2, 3, 4, 5, 6)) is True
    assert await cache.read_window(key, 5) == framed(2, 3, 4, 5, 6)


async def test_a_deleted_or_replaced_incarnation_never_lands(cache: RedisCache) -> None:
    old = thread(2, incarnation=1000)
    key = ThreadKey(old.workspace_id, old.thread_id)
    await cache.push_window(old, 1, enc(1, 2))
    await cache.drop_thread(key, old.incarnation)
    assert await cache.fill_window(old, enc(1, 2)) is False
    assert await cache.push_window(old, 3, enc(3)) is False
    new = dataclasses.replace(old, incarnation=2000, last_seq=1)
    assert await cache.push_window(new, 1, [b"fresh"]) is True
    # A stale fill of the deleted thread arriving after the re-creation must not replace it.
    assert await cache.fill_window(dataclasses.replace(old, last_seq=9), enc(1, 2)) is False
    assert await cache.read_window(key, 5) == [frame_item(b"fresh")]


async def test_preferences_apply_in_version_order_or_fence(cache: RedisCache) -> None:
    ws, user = f"ws-{uuid.uuid4().hex[:8]}", "u"
    v1 = PreferenceSet(1, {"a": PreferenceValue("1", 10)})
    assert await cache.fill_preferences(ws, user, v1) is True
    await cache.apply_preferences(ws, user, PreferenceChange(2, {"b": PreferenceValue("2", 20)}, (), False, 1))
    assert await cache.read_preferences(ws, user) == {"a": ("1", 10), "b": ("2", 20)}
    # Version 4 arrives while the cache holds 2 (3 was lost): the hash is fenced, not patched.
    await cache.apply_preferences(ws, user, PreferenceChange(4, {"c": PreferenceValue("3", 30)}, (), False, 1))
    assert await cache.read_preferences(ws, user) is None
    assert await cache.fill_preferences(ws, user, PreferenceSet(3, {})) is False
    assert await cache.fill_preferences(ws, user, PreferenceSet(4, {"c": PreferenceValue("3", 30)})) is True
    await cache.apply_preferences(ws, user, PreferenceChange(5, {}, (), True, 1))
    assert await cache.read_preferences(ws, user) == {}


async def test_a_window_trimmed_by_a_smaller_setting_is_a_miss_for_a_larger_one(redis_proc: RedisProcess) -> None:
    client = aioredis.Redis.from_url(redis_proc.url)
    try:
        small = RedisCache(client, KeySpace(), window=5, thread_ttl_s=3600, prefs_ttl_s=3600)
        large = RedisCache(client, KeySpace(), window=10, thread_ttl_s=3600, prefs_ttl_s=3600)
        t = thread(12)
        key = ThreadKey(t.workspace_id, t.thread_id)
        assert await small.fill_window(t, enc(*range(1, 13))) is True
        assert await small.read_window(key, 5) == framed(8, 9, 10, 11, 12)
        assert await large.read_window(key, 10) is None
        short = dataclasses.replace(t, last_seq=3)
        assert await small.fill_window(dataclasses.replace(short, incarnation=5000), enc(1, 2, 3)) is True
        assert await large.read_window(key, 10) == framed(1, 2, 3)  # a thread of 3 messages is whole
    finally:
        await client.aclose()


async def test_a_short_whole_window_answers_until_a_push_trims_it(redis_proc: RedisProcess) -> None:
    client = aioredis.Redis.from_url(redis_proc.url)
    try:
        small = RedisCache(client, KeySpace(), window=5, thread_ttl_s=3600, prefs_ttl_s=3600)
        large = RedisCache(client, KeySpace(), window=10, thread_ttl_s=3600, prefs_ttl_s=3600)
        # a truncated thread: last seq 12, but only seqs 1-3 are left, so the window is short and whole
        t = thread(12)
        key = ThreadKey(t.workspace_id, t.thread_id)
        assert await large.fill_window(t, enc(1, 2, 3)) is True
        assert await large.read_window(key, 10) == framed(1, 2, 3)
        assert await large.push_window(dataclasses.replace(t, last_seq=13), 13, enc(13)) is True
        assert await large.read_window(key, 10) == framed(1, 2, 3, 13)
        # a replica with a smaller window trims the list: it is no longer whole for the larger one
        assert await small.push_window(dataclasses.replace(t, last_seq=15), 14, enc(14, 15)) is True
        assert await small.read_window(key, 5) == framed(2, 3, 13, 14, 15)
        assert await large.read_window(key, 10) is None
    finally:
        await client.aclose()


async def test_a_push_larger_than_lua_can_unpack_still_extends_the_window(cache: RedisCache) -> None:
    # A group commit can hand one thread 256 appends x 100 messages; Lua's unpack() stops near 8000.
    t = thread(9000)
    assert await cache.push_window(t, 1, enc(*range(1, 9001))) is True
    assert await cache.read_window(ThreadKey(t.workspace_id, t.thread_id), 5) == framed(8996, 8997, 8998, 8999, 9000)


async def test_a_write_behind_miss_reports_what_is_queued_in_the_same_round_trip(cache: RedisCache) -> None:
    key = ThreadKey(f"ws-{uuid.uuid4().hex[:8]}", "t")
    assert await cache.read_window_or_pending(key, 5) == WindowRead(None, None, 0)  # unknown: nothing queued
    request = QueuedRequest(key, (b"a", b"b", b"c"), "", None, 3600, "{}", 3600, 1000, Seed(False, 0, 0, 7))
    reply = await cache.append_queued(request)
    assert (reply.kind, reply.first, reply.count) == ("ok", 1, 3)
    hit = await cache.read_window_or_pending(key, 2)
    assert hit.framed == b"".join(await cache.read_window(key, 2) or []) and hit.pending is None
    assert hit.framed.count(b"\x0a") >= 2  # two framed messages, joined by Redis
    # The window's key is lost (an eviction); the three queued messages are not flushed yet.
    await cache._client.delete(KeySpace().thread(key.workspace_id, key.thread_id).msgs)
    assert await cache.read_window_or_pending(key, 2) == WindowRead(None, (3, 0), 0)
    assert await cache.pending_seq(key) == (3, 0)  # the same answer as the separate script's


async def test_a_fill_read_before_a_retention_trim_is_refused(cache: RedisCache) -> None:
    t = thread(5)
    key = ThreadKey(t.workspace_id, t.thread_id)
    missed = await cache.read_window_or_pending(key, 5)
    assert missed.framed is None and missed.fence == 0
    # The store read (seqs 1..5) happens, then retention trims seqs 1..2 and drops the window...
    await cache.trim_thread(key, t.incarnation, 2)
    # ...so the fill of that read, landing late, must not bring the trimmed messages back.
    assert await cache.fill_window(t, enc(1, 2, 3, 4, 5), missed.fence) is False
    assert await cache.read_window(key, 5) is None
    again = await cache.read_window_or_pending(key, 5)
    assert again.fence == 1
    assert await cache.fill_window(dataclasses.replace(t, message_count=3), enc(3, 4, 5), again.fence) is True
    assert await cache.read_window(key, 3) == framed(3, 4, 5)
