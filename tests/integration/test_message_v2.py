"""Message v2 on every backend: parts, envelope, ids and token counts round-trip; ids are unique; budgets."""

from __future__ import annotations

import grpc
import pytest
import redis.asyncio as aioredis
from google.rpc import error_details_pb2, status_pb2

from chatmem.v1 import resources_pb2 as r
from chatmem.v1 import thread_memory_service_pb2 as pb
from server.services import budget
from server.storage.redis.keys import KeySpace
from tests.conftest import Harness, msg

pytestmark = pytest.mark.integration

ENVELOPE = b'{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function"}]}'


def rich(message_id: str = "m-1") -> r.MessageInput:
    """A message with every kind of part, an envelope, an id and a token count."""
    return r.MessageInput(
        role=r.ROLE_ASSISTANT,
        name="planner",
        metadata={"k": "v"},
        parts=[
            r.Part(text="Checking "),
            r.Part(reasoning=r.Reasoning(text="think", signature=bytes(range(256)))),
            r.Part(reasoning=r.Reasoning(signature=b"\x00\xffredacted", redacted=True)),
            r.Part(tool_call=r.ToolCall(id="call_1", name="weather", arguments='{ "city" : "Paris" }')),
            r.Part(media=r.Media(uri="https://example.com/a.png", mime_type="image/png", size_bytes=1234)),
            r.Part(media=r.Media(mime_type="image/gif", data=b"GIF89a\x00\x01")),
            r.Part(text="the weather."),
        ],
        envelope=r.Envelope(format="openai.chat", raw=ENVELOPE),
        message_id=message_id,
        token_count=77,
    )


def result(call_id: str, body: str, **kw: object) -> r.MessageInput:
    part = r.Part(tool_result=r.ToolResult(tool_call_id=call_id, parts=[r.Part(text=body)]))
    return r.MessageInput(role=r.ROLE_TOOL, parts=[part], **kw)  # type: ignore[arg-type]


def call(*ids: str, **kw: object) -> r.MessageInput:
    parts = [r.Part(tool_call=r.ToolCall(id=i, name="lookup", arguments=f'{{"id":"{i}"}}')) for i in ids]
    return r.MessageInput(role=r.ROLE_ASSISTANT, parts=parts, **kw)  # type: ignore[arg-type]


async def append(h: Harness, thread: str, *messages: r.MessageInput, **kw: object) -> pb.AppendMessagesResponse:
    return await h.threads.AppendMessages(
        pb.AppendMessagesRequest(workspace_id=h.ws, thread_id=thread, messages=messages, **kw)  # type: ignore[arg-type]
    )


def same_message(got: r.Message, sent: r.MessageInput) -> None:
    assert got.role == sent.role
    assert got.name == sent.name and dict(got.metadata) == dict(sent.metadata)
    assert list(got.parts) == list(sent.parts)
    assert got.envelope.raw == sent.envelope.raw and got.envelope.format == sent.envelope.format
    assert (got.message_id, got.token_count) == (sent.message_id, sent.token_count)


async def all_reads(h: Harness, thread: str) -> list[list[r.Message]]:
    """The thread as GetHistory (window), GetHistory past the window (store), ListMessages and StreamHistory."""
    ws = h.ws
    window = (await h.threads.GetHistory(pb.GetHistoryRequest(workspace_id=ws, thread_id=thread))).messages
    wide = (await h.threads.GetHistory(pb.GetHistoryRequest(workspace_id=ws, thread_id=thread, limit=900))).messages
    listed = (await h.threads.ListMessages(pb.ListMessagesRequest(workspace_id=ws, thread_id=thread))).messages
    streamed = [
        m
        async for chunk in h.threads.StreamHistory(pb.StreamHistoryRequest(workspace_id=ws, thread_id=thread))
        for m in chunk.messages
    ]
    return [list(window), list(wide), list(listed), streamed]


async def test_every_part_kind_round_trips_byte_for_byte_in_every_tier(api: Harness) -> None:
    sent = [msg("plain v1"), rich(), result("call_1", "18C", message_id="m-2")]
    await append(api, "v2", *sent)
    await api.drained()
    for read in await all_reads(api, "v2"):
        assert [m.seq for m in read] == [1, 2, 3]
        for got, want in zip(read, sent, strict=True):
            same_message(got, want)
        assert read[1].content == "Checking the weather."  # filled from the text parts for v1 readers
        assert read[0].content == "plain v1" and not read[0].parts


async def test_a_cache_miss_hydrates_v2_messages_unchanged(cached: Harness, redis_client: aioredis.Redis) -> None:
    await append(cached, "miss", rich("a"), rich("b"))
    await cached.drained()
    keys = KeySpace(cached.app.settings.redis.key_prefix).thread(cached.ws, "miss")
    await redis_client.delete(keys.msgs, keys.meta)
    got = (await cached.threads.GetHistory(pb.GetHistoryRequest(workspace_id=cached.ws, thread_id="miss"))).messages
    assert [m.message_id for m in got] == ["a", "b"]
    for m in got:
        same_message(m, rich(m.message_id))


def violations(err: grpc.aio.AioRpcError) -> dict[str, str]:
    status = status_pb2.Status.FromString(dict(err.trailing_metadata())["grpc-status-details-bin"])
    out: dict[str, str] = {}
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            out.update({v.field: v.description for v in bad.field_violations})
    return out


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (r.MessageInput(role=r.ROLE_USER, parts=[r.Part()]), "messages[0].parts[0]"),
        (r.MessageInput(role=r.ROLE_USER, content="x", parts=[r.Part(text="y")]), "messages[0].content"),
        (call(""), "messages[0].parts[0].tool_call.id"),
        (r.MessageInput(role=r.ROLE_ASSISTANT, parts=[r.Part(tool_call=r.ToolCall(id="c"))]), None),
        (
            r.MessageInput(
                role=r.ROLE_TOOL,
                parts=[
                    r.Part(tool_result=r.ToolResult(tool_call_id="c", parts=[r.Part(tool_call=r.ToolCall(id="d"))]))
                ],
            ),
            "messages[0].parts[0].tool_result.parts[0].tool_call",
        ),
        (r.MessageInput(role=r.ROLE_USER, parts=[r.Part(media=r.Media(mime_type="image/png"))]), None),
        (
            r.MessageInput(role=r.ROLE_USER, parts=[r.Part(media=r.Media(mime_type="image/png", data=b"x" * 70000))]),
            "messages[0].parts[0].media.data",
        ),
        (r.MessageInput(role=r.ROLE_USER, envelope=r.Envelope(format="OpenAI Chat")), "messages[0].envelope.format"),
        (r.MessageInput(role=r.ROLE_USER, content="a", message_id="bad id"), "messages[0].message_id"),
        (r.MessageInput(role=r.ROLE_USER, content="a", token_count=-1), "messages[0].token_count"),
        (r.MessageInput(role=r.ROLE_USER, parts=[r.Part(text="p")] * 300), "messages[0].parts"),
    ],
)
async def test_malformed_v2_messages_are_refused_naming_the_field(
    sqlite_api: Harness, message: r.MessageInput, field: str | None
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await append(sqlite_api, "bad", message)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = violations(caught.value)
    if field is None:
        assert found, "a violation is named"
    else:
        assert field in found, found


async def test_an_id_repeated_within_one_request_is_refused(sqlite_api: Harness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await append(sqlite_api, "dup", msg("a", message_id="x"), msg("b", message_id="x"))
    assert "messages[1].message_id" in violations(caught.value)


async def test_message_ids_are_unique_in_a_thread_queued_or_flushed(api: Harness) -> None:
    await append(api, "ids", msg("a", message_id="one"), request_id="r1")
    for flushed in (False, True):
        if flushed:
            await api.drained()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await append(api, "ids", msg("b", message_id="two"), msg("c", message_id="one"))
        assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert "messages[1].message_id" in violations(caught.value)
    # a retry of the first request is a replay, not a clash; another thread may reuse the id
    replay = await append(api, "ids", msg("a", message_id="one"), request_id="r1")
    assert replay.replayed and list(replay.seqs) == [1]
    assert list((await append(api, "other", msg("a", message_id="one"))).seqs) == [1]
    await api.drained()
    read = await all_reads(api, "ids")
    assert [[m.message_id for m in rd] for rd in read] == [["one"]] * 4


def tool_thread() -> list[r.MessageInput]:
    """Turns with single and parallel tool calls, results in one or several messages, and plain replies."""
    out: list[r.MessageInput] = [r.MessageInput(role=r.ROLE_SYSTEM, content="be brief", token_count=3)]
    for i in range(12):
        out.append(msg(f"question {i} " + "x" * (i * 3)))
        if i % 3 == 0:
            out += [call(f"a{i}", f"b{i}", token_count=5), result(f"a{i}", "1"), result(f"b{i}", "2" * 40)]
        elif i % 3 == 1:
            out.append(call(f"c{i}"))
            both = [
                r.Part(tool_result=r.ToolResult(tool_call_id=f"c{i}", parts=[r.Part(text="ok")])),
                r.Part(text="and a note"),
            ]
            out.append(r.MessageInput(role=r.ROLE_USER, parts=both))
        out.append(msg(f"answer {i}", r.ROLE_ASSISTANT))
    return out


def check_budget(messages: list[r.Message], max_tokens: int) -> int:
    cost = sum(budget.tokens(m) for m in messages)
    assert cost <= max_tokens
    calls_ = {p.tool_call.id for m in messages for p in m.parts if p.WhichOneof("kind") == "tool_call"}
    answers = {p.tool_result.tool_call_id for m in messages for p in m.parts if p.WhichOneof("kind") == "tool_result"}
    assert calls_ == answers, "a call without its result or a result without its call"
    return cost


async def test_no_budget_splits_a_pair_or_is_exceeded(api: Harness) -> None:
    sent = tool_thread()
    await append(api, "budget", *sent)
    everything = (await api.threads.GetHistory(pb.GetHistoryRequest(workspace_id=api.ws, thread_id="budget"))).messages
    total = sum(budget.tokens(m) for m in everything)
    previous = -1
    for max_tokens in range(total + 2):
        req = pb.GetHistoryRequest(workspace_id=api.ws, thread_id="budget", max_tokens=max_tokens)
        got = list((await api.threads.GetHistory(req)).messages)
        check_budget(got, max_tokens)
        seqs = [m.seq for m in got]
        assert seqs == list(range(len(sent) - len(got) + 1, len(sent) + 1)), "the newest, oldest first"
        assert len(got) >= previous, "a larger budget never returns less"
        previous = len(got)
    assert previous == len(sent)


async def test_the_system_prefix_is_kept_first(api: Harness) -> None:
    await append(api, "prefix", *tool_thread())
    req = pb.GetHistoryRequest(workspace_id=api.ws, thread_id="prefix", max_tokens=20, keep_system_prefix=True)
    got = list((await api.threads.GetHistory(req)).messages)
    assert got[0].seq == 1 and got[0].content == "be brief"
    assert got[1].seq > 2
    check_budget(got, 20)


async def test_a_budget_past_the_window_reads_the_store(cached: Harness) -> None:
    window = cached.app.repository.window
    sent = [msg(f"m{i}", token_count=1) for i in range(window + 30)]
    for i in range(0, len(sent), 50):
        await append(cached, "long", *sent[i : i + 50])
    req = pb.GetHistoryRequest(workspace_id=cached.ws, thread_id="long", max_tokens=window + 10)
    got = await cached.threads.GetHistory(req)
    assert [m.seq for m in got.messages] == list(range(len(sent) - window - 9, len(sent) + 1))
    assert got.serving.tier == r.TIER_STORE
    inside = pb.GetHistoryRequest(workspace_id=cached.ws, thread_id="long", max_tokens=10)
    small = await cached.threads.GetHistory(inside)
    assert (len(small.messages), small.serving.tier) == (10, r.TIER_CACHE)


async def test_the_context_block_spells_out_tool_use_within_the_budget(api: Harness) -> None:
    await append(api, "ctx", msg("weather?"), call("w1"), result("w1", "sunny"), msg("It is sunny.", r.ROLE_ASSISTANT))
    got = await api.threads.GetContext(pb.GetContextRequest(workspace_id=api.ws, thread_id="ctx"))
    assert got.context.splitlines() == [
        "Previous conversation:",
        "user: weather?",
        'assistant: [tool call lookup id=w1: {"id":"w1"}]',
        "tool: [tool result id=w1: sunny]",
        "assistant: It is sunny.",
    ]
    # 4 tokens hold the answer (3) but not the call/result pair with it
    small = await api.threads.GetContext(pb.GetContextRequest(workspace_id=api.ws, thread_id="ctx", max_tokens=4))
    assert small.context.splitlines() == ["Previous conversation:", "assistant: It is sunny."]
