"""The watch hub's bookkeeping, the relay's notice format, and reading a stored message's seq."""

from __future__ import annotations

import asyncio

import pytest

from chatmem.v1 import resources_pb2 as r
from server.errors import QuotaExceededError, UnavailableError
from server.services.watch import seq_of, varint_field
from server.storage.models import ThreadKey
from server.storage.redis.notify import RedisRelay, _encode
from server.storage.watch import WatchHub


def hub(cap: int = 2) -> WatchHub:
    return WatchHub(max_per_workspace=cap, poll_s=0.5, recheck_s=2.0, shared_store=True)


def test_seq_of_reads_field_3_whatever_comes_before_it() -> None:
    for seq in (1, 127, 128, 300, 2**40):
        m = r.Message(workspace_id="ws", thread_id="t" * 200, seq=seq, content="x" * 1000)
        assert seq_of(m.SerializeToString()) == seq
    with pytest.raises(ValueError, match="no seq"):
        seq_of(r.Message(content="x").SerializeToString())
    summary = r.Message(seq=7, content="summary", summarizes_through_seq=7).SerializeToString()
    assert varint_field(summary, 14) == 7
    assert varint_field(r.Message(seq=7).SerializeToString(), 14) == 0


async def test_an_append_wakes_the_threads_watchers_only_when_it_is_news() -> None:
    h = hub()
    a = ThreadKey("ws", "a")
    w = h.open(a)
    other = h.open(ThreadKey("ws", "b"))
    w.arm(fresh=False)
    h.note_appended(a, 3)
    assert w.newest == 3
    await asyncio.wait_for(w.wait(10), 1)  # woken at once
    w.arm(fresh=False)
    h.note_appended(a, 2)  # old news: no wake-up
    started = asyncio.get_running_loop().time()
    assert not await w.wait(0.05)
    assert asyncio.get_running_loop().time() - started >= 0.04
    assert other.newest == 0
    h.note_removed(a)
    assert w.removals == 1 and w.newest == 0


async def test_watchers_woken_by_one_notice_share_one_read_and_a_poll_reads_anew() -> None:
    h = hub(cap=0)
    a = ThreadKey("ws", "a")
    watchers = [h.open(a) for _ in range(3)]
    loads = 0

    async def load() -> int:
        nonlocal loads
        loads += 1
        await asyncio.sleep(0.01)
        return loads

    for w in watchers:
        w.arm(fresh=False)
    h.note_appended(a, 1)
    for w in watchers:
        w.arm(fresh=False)
    got = await asyncio.gather(*(w.read(5, load) for w in watchers))
    assert loads == 1 and got == [(1, 5)] * 3
    watchers[0].arm(fresh=False)
    assert await watchers[0].read(5, load) == (1, 5)  # nothing new was noticed: the read still holds
    assert await watchers[0].read(9, load) == (2, 9)  # more items than the shared read has: its own
    watchers[1].arm(fresh=True)  # a poll: only a read that begins now will do
    assert await watchers[1].read(5, load) == (3, 5)


def test_the_cap_counts_watches_per_workspace_and_frees_slots() -> None:
    h = hub(cap=2)
    first = h.open(ThreadKey("ws", "a"))
    h.open(ThreadKey("ws", "a"))
    with pytest.raises(QuotaExceededError):
        h.open(ThreadKey("ws", "b"))
    h.open(ThreadKey("other", "a"))
    first.close()
    first.close()  # idempotent
    h.open(ThreadKey("ws", "b"))
    assert h.watchers == 3


async def test_closing_the_hub_ends_watches_with_unavailable() -> None:
    h = hub()
    w = h.open(ThreadKey("ws", "a"))
    w.arm(fresh=False)
    waiting = asyncio.ensure_future(w.wait(10))
    await asyncio.sleep(0)
    h.close()
    with pytest.raises(UnavailableError):
        await asyncio.wait_for(waiting, 1)
    with pytest.raises(UnavailableError):
        h.open(ThreadKey("ws", "b"))


def test_the_interval_polls_fast_and_degraded_only_while_notices_cannot_arrive() -> None:
    h = hub()
    assert h.interval() == (0.5, False)  # no Redis, shared store: polling is the design
    local = WatchHub(max_per_workspace=0, poll_s=0.5, recheck_s=2.0, shared_store=False)
    assert local.interval() == (2.0, False)
    relay = RedisRelay(None, "p", h, timeout_s=0.5)
    h.relay = relay
    assert h.interval() == (0.5, True)
    relay._live = True
    assert h.interval() == (2.0, False)


def test_the_relay_delivers_other_replicas_notices_and_skips_its_own() -> None:
    h = hub()
    a, b = ThreadKey("ws", "a"), ThreadKey("ws", "b")
    wa, wb = h.open(a), h.open(b)
    mine = RedisRelay(None, "p", h, timeout_s=0.5)
    theirs = RedisRelay(None, "p", hub(), timeout_s=0.5)
    mine._deliver(_encode(mine._origin, {a: 9}, set()))
    assert wa.newest == 0
    mine._deliver(_encode(theirs._origin, {a: 9}, {b}))
    assert wa.newest == 9 and wb.removals == 1
