"""The client's plumbing without a server: connect options, pagers, and the sync layer's private loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from chatmem import CHANNEL_OPTIONS, AsyncPager, MemoryClient, Page, SyncMemoryClient
from chatmem._channel import ChannelSpec
from chatmem._sync import _LoopThread, refuse_inside_event_loop


def test_api_key_and_metadata_go_with_every_call_in_lower_case() -> None:
    spec = ChannelSpec.build("h:1", api_key="s3cret", metadata={"X-Tenant": "acme"})
    assert spec.metadata == (("x-tenant", "acme"), ("authorization", "Bearer s3cret"))
    assert spec.credentials is None
    pairs = ChannelSpec.build("h:1", metadata=[("a", "1"), ("a", "2")])
    assert pairs.metadata == (("a", "1"), ("a", "2"))


def test_keepalive_respects_the_servers_minimum_ping_interval() -> None:
    options = dict(CHANNEL_OPTIONS)
    assert options["grpc.keepalive_time_ms"] >= 30_000  # the server's GRPC__MIN_PING_INTERVAL_MS
    assert options["grpc.keepalive_permit_without_calls"] == 1
    assert options["grpc.max_receive_message_length"] >= 64 * 1024 * 1024  # the server's largest response


def test_caller_options_come_after_the_defaults_so_they_win() -> None:
    spec = ChannelSpec.build("h:1", options=[("grpc.keepalive_time_ms", 120_000)])
    assert dict(spec.options)["grpc.keepalive_time_ms"] == 120_000


def test_tls_builds_channel_credentials_and_given_ones_are_kept() -> None:
    assert ChannelSpec.build("h:1", tls=True).credentials is not None
    creds = grpc.ssl_channel_credentials()
    assert ChannelSpec.build("h:1", credentials=creds).credentials is creds


def test_unknown_connect_options_are_refused() -> None:
    with pytest.raises(TypeError, match="timeot"):
        MemoryClient.connect("h:1", timeot=3)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="timeot"):
        SyncMemoryClient.connect("h:1", timeot=3)  # type: ignore[call-arg]


async def test_pager_walks_pages_lazily_from_a_token() -> None:
    book = {"": Page([1, 2], "p2"), "p2": Page([3], "p3"), "p3": Page([4, 5], "")}
    fetched: list[str] = []

    async def fetch(token: str) -> Page[int]:
        fetched.append(token)
        return book[token]

    assert await AsyncPager(fetch).collect() == [1, 2, 3, 4, 5]
    fetched.clear()
    async for item in AsyncPager(fetch):
        if item == 2:
            break
    assert fetched == [""], "a page is fetched only when the previous one is used up"
    assert [p.items async for p in AsyncPager(fetch, "p2").pages()] == [[3], [4, 5]]


def test_loop_thread_runs_coroutines_and_closes_abandoned_iterators() -> None:
    portal = _LoopThread()
    closed: list[bool] = []

    async def numbers() -> AsyncIterator[int]:
        try:
            for i in range(100):
                yield i
        finally:
            closed.append(True)

    async def double(x: int) -> int:
        return 2 * x

    try:
        assert portal.run(double(21)) == 42
        taken = []
        for n in portal.iterate(numbers(), "numbers"):
            taken.append(n)
            if n == 2:
                break
        assert taken == [0, 1, 2]
        assert closed == [True]
    finally:
        portal.stop()
    assert not portal.loop.is_running()


def test_blocking_calls_are_allowed_outside_an_event_loop() -> None:
    refuse_inside_event_loop("get_history")


async def test_blocking_calls_are_refused_inside_an_event_loop() -> None:
    with pytest.raises(RuntimeError, match=r"get_history\(\) blocks.*inside a running event loop"):
        refuse_inside_event_loop("get_history")
    await asyncio.sleep(0)
