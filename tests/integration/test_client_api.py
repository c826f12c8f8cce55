"""Every MemoryClient method against the real server in-process, on each backend."""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator

import pytest

from chatmem import ConflictError, MemoryClient, Message, MessageInput, NotFoundError
from chatmem.v1 import thread_memory_service_pb2 as pb
from tests.conftest import Harness

pytestmark = pytest.mark.integration


@pytest.fixture
async def memory(api: Harness) -> AsyncIterator[MemoryClient]:
    async with MemoryClient.connect(f"127.0.0.1:{api.app.port}", workspace_id=api.ws) as client:
        yield client


async def test_seeds_append_get_history_count_and_clear(memory: MemoryClient) -> None:
    first = await memory.append("conv_abc", "user", "What is the capital of France?")
    await memory.append("conv_abc", "assistant", "Paris.")
    assert first.seqs == (1,) and first.durability in ("persisted", "queued") and not first.replayed
    assert await memory.get_history("conv_abc") == [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
    ]
    assert await memory.count("conv_abc") == 2
    cleared = await memory.clear("conv_abc")
    assert (cleared == 2) if first.durability == "persisted" else (0 <= cleared <= 2), (
        "write_behind counts flushed ones"
    )
    assert await memory.get_history("conv_abc") == []
    assert await memory.count("conv_abc") == 0
    assert await memory.clear("conv_abc") == 0, "clearing a missing thread is not an error"


async def test_typed_history_and_limit(memory: MemoryClient) -> None:
    await memory.append_messages(
        "t",
        [
            {"role": "system", "content": "be brief"},
            MessageInput("user", "hi", name="ada", metadata={"lang": "en"}),
            {"role": "tool", "content": "42", "name": "calc"},
        ],
    )
    typed = await memory.get_history("t", typed=True)
    assert all(isinstance(m, Message) for m in typed)
    assert [(m.seq, m.role, m.content, m.name) for m in typed] == [
        (1, "system", "be brief", ""),
        (2, "user", "hi", "ada"),
        (3, "tool", "42", "calc"),
    ]
    assert typed[1].metadata == {"lang": "en"}
    assert typed[0].thread_id == "t" and typed[0].workspace_id == memory.workspace_id
    assert typed[0].create_time.tzinfo is not None
    assert await memory.get_history("t", limit=1) == [{"role": "tool", "content": "42"}]


async def test_reads_say_how_they_were_served(memory: MemoryClient) -> None:
    await memory.append("t", "user", "hi")
    await memory.set_preferences("ada", {"tone": "brief"})
    for served in (
        await memory.get_history("t"),
        await memory.get_history("t", typed=True),
        await memory.get_preferences("ada"),
        await memory.get_preferences("ada", typed=True),
        await memory.get_context(thread_id="t", user_id="ada"),
    ):
        assert served.serving.tier in ("cache", "store") and not served.serving.degraded
    history = await memory.get_history("t")
    assert isinstance(history, list) and history == [{"role": "user", "content": "hi"}]


async def test_new_thread_options_and_thread_metadata(memory: MemoryClient) -> None:
    result = await memory.append("t", "user", "hi", user_id="ada", title="Trip", ttl=datetime.timedelta(hours=2))
    await memory.append("t", "assistant", "hello", title="ignored once the thread exists")
    assert result.message_count == 1
    thread = await memory.get_thread("t")
    assert (thread.thread_id, thread.user_id, thread.title) == ("t", "ada", "Trip")
    assert thread.ttl == datetime.timedelta(hours=2)
    assert (thread.message_count, thread.last_seq, thread.pinned) == (2, 2, False)
    assert thread.update_time >= thread.create_time

    updated = await memory.update_thread("t", title="Paris trip", pinned=True, ttl=600)
    assert (updated.title, updated.pinned, updated.ttl) == ("Paris trip", True, datetime.timedelta(minutes=10))
    only_pin = await memory.update_thread("t", pinned=False)
    assert (only_pin.title, only_pin.pinned) == ("Paris trip", False), "fields left out do not change"


async def test_a_request_id_makes_a_retry_store_nothing_twice(memory: MemoryClient) -> None:
    first = await memory.append("t", "user", "once", request_id="turn-1")
    again = await memory.append("t", "user", "once", request_id="turn-1")
    assert again.replayed and again.seqs == first.seqs == (1,)
    assert first.request_id == again.request_id == "turn-1"
    other = await memory.append("t", "user", "twice")
    assert other.seqs == (2,) and len(other.request_id) == 32, "each call gets a fresh id by default"
    assert [m["content"] for m in await memory.get_history("t")] == ["once", "twice"]


async def test_expected_last_seq_guards_against_a_concurrent_writer(memory: MemoryClient) -> None:
    await memory.append("t", "user", "a", expected_last_seq=0)
    await memory.append("t", "user", "b", expected_last_seq=1)
    with pytest.raises(ConflictError):
        await memory.append("t", "user", "c", expected_last_seq=1)
    assert await memory.count("t") == 2


async def test_list_messages_pages_forward_backward_and_from_a_token(memory: MemoryClient) -> None:
    await memory.append_messages("t", [{"role": "user", "content": f"m{i}"} for i in range(1, 26)])
    pager = memory.list_messages("t", page_size=10)
    assert [m.seq async for m in pager] == list(range(1, 26))
    pages = [p async for p in pager.pages()]
    assert [len(p.items) for p in pages] == [10, 10, 5]
    assert pages[-1].next_page_token == ""
    resumed = memory.list_messages("t", page_size=10, page_token=pages[0].next_page_token)
    assert [m.seq async for m in resumed] == list(range(11, 26))
    assert [m.seq async for m in memory.list_messages("t", page_size=7, reverse=True)] == list(range(25, 0, -1))
    assert [m.content async for m in memory.list_messages("t", start_seq=23)] == ["m23", "m24", "m25"]


async def test_stream_history_whole_and_after_a_seq(memory: MemoryClient) -> None:
    for start in range(0, 1200, 100):
        await memory.append_messages("t", [MessageInput("user", f"m{i}") for i in range(start + 1, start + 101)])
    seqs = [m.seq async for m in memory.stream_history("t", chunk_size=100)]
    assert seqs == list(range(1, 1201))
    tail = [m.content async for m in memory.stream_history("t", after_seq=1195)]
    assert tail == ["m1196", "m1197", "m1198", "m1199", "m1200"]
    assert [m async for m in memory.stream_history("never-written")] == []


async def test_get_context_renders_the_seeds_block(memory: MemoryClient) -> None:
    await memory.append_messages(
        "t", [{"role": "user", "content": "Hi, I'm Ada."}, {"role": "assistant", "content": "Hello Ada!"}]
    )
    await memory.set_preferences("ada", {"tone": "brief", "language": "English"})
    both = await memory.get_context(thread_id="t", user_id="ada")
    assert both.text == (
        "Previous conversation:\nuser: Hi, I'm Ada.\nassistant: Hello Ada!\n\n"
        "User preferences:\nlanguage: English\ntone: brief"
    )
    assert (both.message_count, both.preference_count) == (2, 2)
    assert str(both) == both.text
    only_prefs = await memory.get_context(user_id="ada")
    assert only_prefs.text == "User preferences:\nlanguage: English\ntone: brief"
    last_one = await memory.get_context(thread_id="t", max_messages=1)
    assert last_one.text == "Previous conversation:\nassistant: Hello Ada!"
    assert (await memory.get_context()).text == ""


async def test_threads_list_newest_first_and_delete(memory: MemoryClient) -> None:
    durable = await memory.append("t0", "user", "hi", user_id="ada")
    for i in range(1, 5):
        await memory.append(f"t{i}", "user", "hi", user_id="ada")
    await memory.append("someone-else", "user", "hi", user_id="bob")
    pager = memory.list_threads("ada", page_size=2)
    assert [t.thread_id async for t in pager] == ["t4", "t3", "t2", "t1", "t0"]
    assert [len(p.items) async for p in pager.pages()] == [2, 2, 1]
    deleted = await memory.delete_thread("t0")
    assert (deleted == 1) if durable.durability == "persisted" else (deleted in (0, 1)), (
        "write_behind counts flushed ones"
    )
    with pytest.raises(NotFoundError):
        await memory.delete_thread("t0")
    assert await memory.delete_thread("t0", allow_missing=True) == 0
    with pytest.raises(NotFoundError):
        await memory.get_thread("t0")
    assert [t.thread_id async for t in memory.list_threads("ada")] == ["t4", "t3", "t2", "t1"]


async def test_preferences_set_get_and_delete(memory: MemoryClient) -> None:
    assert await memory.set_preferences("ada", {"language": "French", "tone": "formal", "units": "metric"}) == 3
    assert await memory.get_preferences("ada") == {"language": "French", "tone": "formal", "units": "metric"}
    assert await memory.get_preferences("ada", keys=["tone", "missing"]) == {"tone": "formal"}
    await memory.set_preferences("ada", {"tone": "casual"})
    typed = await memory.get_preferences("ada", typed=True)
    assert [(p.key, p.value) for p in typed] == [("language", "French"), ("tone", "casual"), ("units", "metric")]
    assert all(p.update_time.tzinfo is not None for p in typed)
    assert await memory.delete_preferences("ada", ["units", "missing"]) == 1
    assert await memory.delete_preferences("ada", all_keys=True) == 2
    assert await memory.get_preferences("ada") == {}
    assert await memory.get_preferences("nobody") == {}


async def test_workspaces_do_not_see_each_other(api: Harness, memory: MemoryClient) -> None:
    await memory.append("shared-name", "user", "mine")
    async with MemoryClient.connect(f"127.0.0.1:{api.app.port}", workspace_id=api.ws + "-other") as other:
        assert await other.get_history("shared-name") == []
        await other.append("shared-name", "user", "theirs")
    assert await memory.get_history("shared-name") == [{"role": "user", "content": "mine"}]


async def test_raw_stubs_reach_the_same_server(memory: MemoryClient) -> None:
    await memory.append("t", "user", "hi")
    raw = await memory.raw.threads.GetHistory(pb.GetHistoryRequest(workspace_id=memory.workspace_id, thread_id="t"))
    assert [m.content for m in raw.messages] == ["hi"]


async def test_connect_can_be_awaited_and_closed_explicitly(api: Harness) -> None:
    client = await MemoryClient.connect(f"127.0.0.1:{api.app.port}", workspace_id=api.ws, timeout=5)
    try:
        await client.append("t", "user", "hi")
        assert await client.count("t") == 1
        assert repr(client) == f"MemoryClient('127.0.0.1:{api.app.port}', workspace_id='{api.ws}')"
    finally:
        await client.close()
