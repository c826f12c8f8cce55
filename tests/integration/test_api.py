"""The API suite: every RPC against every backend (SQLite, PostgreSQL, each with and without Redis)."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import duration_pb2

from chatmem.v1 import preferences_service_pb2 as pp
from chatmem.v1 import resources_pb2 as r
from chatmem.v1 import thread_memory_service_pb2 as pb
from tests.conftest import Harness, exchange, msg

pytestmark = pytest.mark.integration


async def append(h: Harness, thread: str, messages: list[r.MessageInput], **kw: object) -> pb.AppendMessagesResponse:
    return await h.threads.AppendMessages(
        pb.AppendMessagesRequest(workspace_id=h.ws, thread_id=thread, messages=messages, **kw)  # type: ignore[arg-type]
    )


async def history(h: Harness, thread: str, limit: int = 0) -> pb.GetHistoryResponse:
    return await h.threads.GetHistory(pb.GetHistoryRequest(workspace_id=h.ws, thread_id=thread, limit=limit))


async def test_append_then_history_round_trips_every_field(api: Harness) -> None:
    first = await append(
        api,
        "t1",
        [msg("hi", name="alice", metadata={"lang": "en"}), msg("hello", r.ROLE_ASSISTANT)],
        user_id="u1",
        title="greeting",
    )
    assert list(first.seqs) == [1, 2]
    assert first.message_count == 2
    assert first.durability == api.durability
    second = await append(api, "t1", [msg("tool out", r.ROLE_TOOL), msg("", r.ROLE_SYSTEM)])
    assert list(second.seqs) == [3, 4]
    got = await history(api, "t1")
    assert [m.seq for m in got.messages] == [1, 2, 3, 4]
    assert [m.content for m in got.messages] == ["hi", "hello", "tool out", ""]
    assert [m.role for m in got.messages] == [r.ROLE_USER, r.ROLE_ASSISTANT, r.ROLE_TOOL, r.ROLE_SYSTEM]
    one = got.messages[0]
    assert (one.workspace_id, one.thread_id, one.name, dict(one.metadata)) == (api.ws, "t1", "alice", {"lang": "en"})
    assert one.create_time.seconds > 1_700_000_000


async def test_history_limit_returns_the_newest_oldest_first(api: Harness) -> None:
    for i in range(5):
        await append(api, "t", exchange(i))
    got = await history(api, "t", limit=3)
    assert [m.seq for m in got.messages] == [8, 9, 10]


async def test_unknown_thread_has_an_empty_window_and_get_thread_is_not_found(api: Harness) -> None:
    got = await history(api, "never-written")
    assert list(got.messages) == []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.threads.GetThread(pb.GetThreadRequest(workspace_id=api.ws, thread_id="never-written"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_empty_workspace_means_default(api: Harness) -> None:
    thread = f"default-{api.ws}"
    await api.threads.AppendMessages(pb.AppendMessagesRequest(thread_id=thread, messages=[msg("x")]))
    got = await api.threads.GetHistory(pb.GetHistoryRequest(workspace_id="default", thread_id=thread))
    assert [m.workspace_id for m in got.messages] == ["default"]


async def test_request_id_replay_returns_the_first_result_and_stores_once(api: Harness) -> None:
    first = await append(api, "t", exchange(1), request_id="req-1")
    again = await append(api, "t", exchange(1), request_id="req-1")
    assert list(again.seqs) == list(first.seqs) == [1, 2]
    assert again.replayed and not first.replayed
    assert again.message_count == 2
    listed = await api.threads.ListMessages(pb.ListMessagesRequest(workspace_id=api.ws, thread_id="t"))
    assert [m.seq for m in listed.messages] == [1, 2]


async def test_expected_last_seq_gives_optimistic_concurrency(api: Harness) -> None:
    await append(api, "t", [msg("a")], expected_last_seq=0)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await append(api, "t", [msg("b")], expected_last_seq=0)
    assert err.value.code() == grpc.StatusCode.ABORTED
    ok = await append(api, "t", [msg("b")], expected_last_seq=1)
    assert list(ok.seqs) == [2]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await append(api, "fresh", [msg("b")], expected_last_seq=3)
    assert err.value.code() == grpc.StatusCode.ABORTED
    # A rejected first append must not leave an empty thread behind.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.threads.GetThread(pb.GetThreadRequest(workspace_id=api.ws, thread_id="fresh"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_list_messages_pages_forward_and_backward(api: Harness) -> None:
    for i in range(5):
        await append(api, "t", exchange(i))
    seen: list[int] = []
    token = ""
    for _ in range(10):
        page = await api.threads.ListMessages(
            pb.ListMessagesRequest(workspace_id=api.ws, thread_id="t", page_size=3, page_token=token)
        )
        seen += [m.seq for m in page.messages]
        token = page.next_page_token
        if not token:
            break
    assert seen == list(range(1, 11))
    back: list[int] = []
    token = ""
    for _ in range(10):
        page = await api.threads.ListMessages(
            pb.ListMessagesRequest(
                workspace_id=api.ws, thread_id="t", page_size=4, page_token=token, reverse=True, start_seq=9
            )
        )
        back += [m.seq for m in page.messages]
        token = page.next_page_token
        if not token:
            break
    assert back == list(range(9, 0, -1))
    mid = await api.threads.ListMessages(pb.ListMessagesRequest(workspace_id=api.ws, thread_id="t", start_seq=7))
    assert [m.seq for m in mid.messages] == [7, 8, 9, 10]


async def test_a_page_token_only_continues_its_own_query(api: Harness) -> None:
    for i in range(3):
        await append(api, "t", exchange(i))
    page = await api.threads.ListMessages(pb.ListMessagesRequest(workspace_id=api.ws, thread_id="t", page_size=2))
    assert page.next_page_token
    for bad in (
        pb.ListMessagesRequest(workspace_id=api.ws, thread_id="other", page_token=page.next_page_token),
        pb.ListMessagesRequest(workspace_id=api.ws, thread_id="t", page_token=page.next_page_token, reverse=True),
        pb.ListMessagesRequest(workspace_id=api.ws, thread_id="t", page_token="not-a-token!"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await api.threads.ListMessages(bad)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "page_token" in (err.value.details() or "")


async def test_stream_history_returns_everything_in_chunks_and_resumes(api: Harness) -> None:
    for i in range(30):
        await append(api, "t", exchange(i))
    req = pb.StreamHistoryRequest(workspace_id=api.ws, thread_id="t", chunk_size=7)
    chunks = [list(c.messages) async for c in api.threads.StreamHistory(req)]
    assert all(len(c) <= 7 for c in chunks)
    assert [m.seq for c in chunks for m in c] == list(range(1, 61))
    resumed = pb.StreamHistoryRequest(workspace_id=api.ws, thread_id="t", after_seq=55)
    assert [m.seq async for c in api.threads.StreamHistory(resumed) for m in c.messages] == [56, 57, 58, 59, 60]


async def test_get_context_renders_the_prompt_block(api: Harness) -> None:
    await append(api, "t", [msg("I like tea"), msg("Noted!", r.ROLE_ASSISTANT)], user_id="u1")
    await api.prefs.SetPreferences(
        pp.SetPreferencesRequest(workspace_id=api.ws, user_id="u1", preferences={"language": "French", "diet": "vegan"})
    )
    got = await api.threads.GetContext(pb.GetContextRequest(workspace_id=api.ws, thread_id="t", user_id="u1"))
    assert got.context == (
        "Previous conversation:\nuser: I like tea\nassistant: Noted!\n\n"
        "User preferences:\ndiet: vegan\nlanguage: French"
    )
    assert (got.message_count, got.preference_count) == (2, 2)
    small = await api.threads.GetContext(
        pb.GetContextRequest(workspace_id=api.ws, thread_id="t", user_id="u1", max_chars=60)
    )
    assert len(small.context) <= 60
    assert small.message_count < 2
    nothing = await api.threads.GetContext(pb.GetContextRequest(workspace_id=api.ws))
    assert nothing.context == ""


async def test_thread_metadata_list_update_delete(api: Harness) -> None:
    for i in range(5):
        await append(api, f"t{i}", [msg("x")], user_id="u1", title=f"title {i}")
    await append(api, "other-user", [msg("x")], user_id="u2")
    seen: list[str] = []
    token = ""
    for _ in range(10):
        page = await api.threads.ListThreads(
            pb.ListThreadsRequest(workspace_id=api.ws, user_id="u1", page_size=2, page_token=token)
        )
        seen += [t.thread_id for t in page.threads]
        token = page.next_page_token
        if not token:
            break
    assert seen == ["t4", "t3", "t2", "t1", "t0"]
    got = await api.threads.GetThread(pb.GetThreadRequest(workspace_id=api.ws, thread_id="t2"))
    assert (got.thread.title, got.thread.user_id, got.thread.message_count, got.thread.last_seq) == (
        "title 2", "u1", 1, 1,
    )  # fmt: skip
    assert got.thread.ttl.seconds == 24 * 3600
    upd = await api.threads.UpdateThread(
        pb.UpdateThreadRequest(workspace_id=api.ws, thread_id="t2", title="renamed", ttl=duration_pb2.Duration(seconds=60), pinned=True)
    )  # fmt: skip
    assert (upd.thread.title, upd.thread.ttl.seconds, upd.thread.pinned) == ("renamed", 60, True)
    keep = await api.threads.UpdateThread(pb.UpdateThreadRequest(workspace_id=api.ws, thread_id="t2", pinned=False))
    assert (keep.thread.title, keep.thread.ttl.seconds, keep.thread.pinned) == ("renamed", 60, False)
    deleted = await api.threads.DeleteThread(pb.DeleteThreadRequest(workspace_id=api.ws, thread_id="t2"))
    assert deleted.deleted_messages == 1
    assert list((await history(api, "t2")).messages) == []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.threads.DeleteThread(pb.DeleteThreadRequest(workspace_id=api.ws, thread_id="t2"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    again = await api.threads.DeleteThread(
        pb.DeleteThreadRequest(workspace_id=api.ws, thread_id="t2", allow_missing=True)
    )
    assert again.deleted_messages == 0
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.threads.UpdateThread(pb.UpdateThreadRequest(workspace_id=api.ws, thread_id="t2", title="x"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_recreated_thread_starts_again_and_never_shows_the_old_window(api: Harness) -> None:
    for i in range(3):
        await append(api, "t", exchange(i))
    await history(api, "t")
    await api.threads.DeleteThread(pb.DeleteThreadRequest(workspace_id=api.ws, thread_id="t"))
    again = await append(api, "t", [msg("new life")])
    assert list(again.seqs) == [1]
    got = await history(api, "t")
    assert [(m.seq, m.content) for m in got.messages] == [(1, "new life")]


async def test_preferences_set_get_delete(api: Harness) -> None:
    user = pp.GetPreferencesRequest(workspace_id=api.ws, user_id="u1")
    assert list((await api.prefs.GetPreferences(user)).preferences) == []
    await api.prefs.SetPreferences(
        pp.SetPreferencesRequest(workspace_id=api.ws, user_id="u1", preferences={"a": "1", "b": "2", "c": "3"})
    )
    await api.prefs.SetPreferences(pp.SetPreferencesRequest(workspace_id=api.ws, user_id="u1", preferences={"b": "20"}))
    got = await api.prefs.GetPreferences(user)
    assert [(p.key, p.value) for p in got.preferences] == [("a", "1"), ("b", "20"), ("c", "3")]
    some = await api.prefs.GetPreferences(pp.GetPreferencesRequest(workspace_id=api.ws, user_id="u1", keys=["c", "zz"]))
    assert [(p.key, p.value) for p in some.preferences] == [("c", "3")]
    gone = await api.prefs.DeletePreferences(
        pp.DeletePreferencesRequest(workspace_id=api.ws, user_id="u1", keys=["a", "missing"])
    )
    assert gone.deleted_count == 1
    assert [p.key for p in (await api.prefs.GetPreferences(user)).preferences] == ["b", "c"]
    wiped = await api.prefs.DeletePreferences(pp.DeletePreferencesRequest(workspace_id=api.ws, user_id="u1", all=True))
    assert wiped.deleted_count == 2
    assert list((await api.prefs.GetPreferences(user)).preferences) == []


async def test_concurrent_appends_to_one_thread_get_unique_contiguous_seqs(api: Harness) -> None:
    async def client(c: int) -> list[int]:
        seqs: list[int] = []
        for i in range(10):
            resp = await append(api, "hot", [msg(f"c{c}-{i}")])
            seqs += list(resp.seqs)
        return seqs

    per_client = await asyncio.gather(*(client(c) for c in range(8)))
    for seqs in per_client:
        assert seqs == sorted(seqs)
    everything = sorted(s for seqs in per_client for s in seqs)
    assert everything == list(range(1, 81))
    listed = await api.threads.ListMessages(pb.ListMessagesRequest(workspace_id=api.ws, thread_id="hot", page_size=100))
    by_seq = {m.seq: m.content for m in listed.messages}
    for c, seqs in enumerate(per_client):
        assert [by_seq[s] for s in seqs] == [f"c{c}-{i}" for i in range(10)]
