"""The embedded mode's in-process cache: the Redis window rules, fenced fills, tombstones, TTLs and the LRU bound."""

from __future__ import annotations

import pytest

from server.storage.codec import frame_item
from server.storage.local_cache import LocalCache
from server.storage.models import PreferenceChange, PreferenceSet, PreferenceValue, ThreadInfo, ThreadKey

WINDOW = 4
KEY = ThreadKey("w", "t")


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def thread(last_seq: int, incarnation: int = 7, *, key: ThreadKey = KEY, **kw: object) -> ThreadInfo:
    fields: dict[str, object] = {"ttl_seconds": None, "pinned": False, **kw}
    return ThreadInfo(
        key.workspace_id, key.thread_id, "", "", fields["ttl_seconds"], bool(fields["pinned"]),  # type: ignore[arg-type]
        last_seq, last_seq, incarnation, 0, 0,
    )  # fmt: skip


def msgs(first: int, last: int) -> list[bytes]:
    return [f"m{i}".encode() for i in range(first, last + 1)]


def framed(first: int, last: int) -> list[bytes]:
    return [frame_item(e) for e in msgs(first, last)]


def cache(clock: Clock | None = None, max_threads: int = 100) -> LocalCache:
    return LocalCache(window=WINDOW, max_threads=max_threads, thread_ttl_s=60, prefs_ttl_s=600, clock=clock or Clock())


async def test_a_new_thread_is_cached_from_its_first_append_and_trimmed_to_the_window() -> None:
    c = cache()
    assert await c.push_window(thread(2), 1, msgs(1, 2))
    assert (await c.read_window_or_pending(KEY, WINDOW)).items == framed(1, 2)
    assert await c.push_window(thread(5), 3, msgs(3, 5))
    assert (await c.read_window_or_pending(KEY, WINDOW)).items == framed(2, 5)
    assert (await c.read_window_or_pending(KEY, 2)).items == framed(4, 5)


async def test_an_append_to_an_uncached_thread_caches_nothing() -> None:
    c = cache()
    assert not await c.push_window(thread(12), 11, msgs(11, 12))
    assert KEY not in c
    assert (await c.read_window_or_pending(KEY, WINDOW)).items is None


async def test_a_gap_invalidates_the_window_until_a_fill() -> None:
    c = cache()
    await c.push_window(thread(2), 1, msgs(1, 2))
    assert not await c.push_window(thread(6), 5, msgs(5, 6))  # seqs 3-4 never reached this cache
    miss = await c.read_window_or_pending(KEY, WINDOW)
    assert miss.items is None and miss.fence is not None
    assert await c.fill_window(thread(6), msgs(1, 6), miss.fence)
    assert (await c.read_window_or_pending(KEY, WINDOW)).items == framed(3, 6)


async def test_a_fill_is_refused_when_the_thread_changed_after_the_miss() -> None:
    c = cache()
    miss = await c.read_window_or_pending(KEY, WINDOW)
    assert miss.items is None
    # The store read behind the miss saw seqs 1-5; an append of 6 commits before the fill lands.
    await c.push_window(thread(6), 6, msgs(6, 6))
    assert not await c.fill_window(thread(5), msgs(1, 5), miss.fence)
    assert (await c.read_window_or_pending(KEY, WINDOW)).items is None


async def test_a_fill_is_refused_after_a_trim_or_a_drop() -> None:
    c = cache()
    await c.fill_window(thread(5), msgs(1, 5), (await c.read_window_or_pending(KEY, WINDOW)).fence)
    await c.trim_thread(KEY, 7, 2)  # a truncate, compaction or retention trim
    miss = await c.read_window_or_pending(KEY, WINDOW)
    assert miss.items is None
    stale = miss.fence
    await c.trim_thread(KEY, 7, 1)
    assert not await c.fill_window(thread(5), msgs(1, 5), stale)
    await c.drop_thread(KEY, 7)
    assert not await c.fill_window(thread(5), msgs(1, 5), None), "the tombstone refuses that incarnation"
    assert not await c.push_window(thread(6), 6, msgs(6, 6)), "and its late pushes"
    assert KEY not in c


async def test_a_recreated_thread_replaces_its_tombstone() -> None:
    c = cache()
    await c.push_window(thread(3), 1, msgs(1, 3))
    await c.drop_thread(KEY, 7)
    assert (await c.read_window_or_pending(KEY, WINDOW)).items is None
    assert await c.push_window(thread(1, incarnation=9), 1, [b"new"])
    assert (await c.read_window_or_pending(KEY, WINDOW)).items == [frame_item(b"new")]
    await c.drop_thread(KEY, 7)  # a late drop of the old incarnation leaves the new one alone
    assert KEY in c


async def test_a_short_window_after_a_truncate_answers_every_limit() -> None:
    c = cache()
    miss = await c.read_window_or_pending(KEY, WINDOW)
    # last_seq stays 9 after a truncate to seq 2: the window holds fewer items than the seqs suggest.
    assert await c.fill_window(thread(9), msgs(1, 2), miss.fence)
    assert (await c.read_window_or_pending(KEY, WINDOW)).items == framed(1, 2)
    assert await c.push_window(thread(10), 10, msgs(10, 10))
    assert (await c.read_window_or_pending(KEY, WINDOW)).items == [*framed(1, 2), frame_item(b"m10")]


async def test_windows_slide_their_ttl_and_pinned_ones_never_expire() -> None:
    clock = Clock()
    c = cache(clock)
    await c.push_window(thread(1), 1, msgs(1, 1))
    other = ThreadKey("w", "pinned")
    await c.push_window(thread(1, key=other, pinned=True), 1, msgs(1, 1))
    clock.now += 50
    assert (await c.read_window_or_pending(KEY, WINDOW)).items is not None  # read: the TTL slides
    clock.now += 50
    assert (await c.read_window_or_pending(KEY, WINDOW)).items is not None
    clock.now += 61
    assert (await c.read_window_or_pending(KEY, WINDOW)).items is None
    assert (await c.read_window_or_pending(other, WINDOW)).items is not None
    await c.retune_window(thread(1, key=other, ttl_seconds=5))
    clock.now += 6
    assert (await c.read_window_or_pending(other, WINDOW)).items is None


async def test_the_lru_keeps_at_most_max_threads() -> None:
    c = cache(max_threads=3)
    keys = [ThreadKey("w", f"t{i}") for i in range(5)]
    for k in keys[:3]:
        await c.push_window(thread(1, key=k), 1, msgs(1, 1))
    await c.read_window_or_pending(keys[0], WINDOW)  # t0 is used again: t1 is now the oldest
    for k in keys[3:]:
        await c.push_window(thread(1, key=k), 1, msgs(1, 1))
    assert len(c) == 3 and c.evictions == 2
    assert [k in c for k in keys] == [True, False, False, True, True]


async def test_a_fill_whose_stamp_was_evicted_is_refused() -> None:
    c = cache(max_threads=1)
    miss = await c.read_window_or_pending(KEY, WINDOW)
    await c.push_window(thread(1, key=ThreadKey("w", "other")), 1, msgs(1, 1))
    assert not await c.fill_window(thread(5), msgs(1, 5), miss.fence)


async def test_preferences_apply_in_version_order_and_fence_otherwise() -> None:
    c = cache()
    v = PreferenceValue
    assert await c.read_preferences("w", "u") is None
    assert await c.fill_preferences("w", "u", PreferenceSet(3, {"a": v("1", 10)}))
    await c.apply_preferences("w", "u", PreferenceChange(4, {"b": v("2", 11)}, (), False, 1))
    assert await c.read_preferences("w", "u") == {"a": ("1", 10), "b": ("2", 11)}
    await c.apply_preferences("w", "u", PreferenceChange(5, {}, ("a",), False, 1))
    assert await c.read_preferences("w", "u") == {"b": ("2", 11)}
    await c.apply_preferences("w", "u", PreferenceChange(7, {"c": v("3", 12)}, (), False, 1))  # 6 was missed
    assert await c.read_preferences("w", "u") is None
    assert not await c.fill_preferences("w", "u", PreferenceSet(6, {})), "a read older than the fence"
    assert await c.fill_preferences("w", "u", PreferenceSet(7, {"c": v("3", 12)}))
    await c.apply_preferences("w", "u", PreferenceChange(8, {}, (), True, 1))
    assert await c.read_preferences("w", "u") == {}
    await c.reset_preferences("w", "u")
    assert await c.read_preferences("w", "u") is None


def test_the_cap_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_threads"):
        LocalCache(window=WINDOW, max_threads=0, thread_ttl_s=1, prefs_ttl_s=1)
