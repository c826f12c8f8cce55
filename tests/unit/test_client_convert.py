"""Pure conversions of the client: seeds-style dicts, typed objects, durations, times, LangChain messages."""

from __future__ import annotations

import datetime

import pytest
from google.protobuf import timestamp_pb2
from langchain_core.messages import AIMessage, ChatMessage, HumanMessage, SystemMessage, ToolMessage

from chatmem import (
    Envelope,
    InvalidArgumentError,
    Media,
    Message,
    MessageInput,
    Reasoning,
    TextPart,
    ToolCall,
    ToolResult,
)
from chatmem import _convert as convert
from chatmem.langchain import to_chatmem, to_langchain
from chatmem.v1 import resources_pb2 as r
from chatmem.v1 import thread_memory_service_pb2 as pb


def test_seeds_dicts_and_typed_inputs_build_the_same_messages() -> None:
    built = convert.message_inputs(
        [
            {"role": "user", "content": "hi"},
            MessageInput("assistant", "hello", name="bot", metadata={"k": "v"}),
            {"role": "tool", "content": "", "name": "search", "metadata": {"id": "7"}},
            {"role": "system", "content": "be brief"},
        ]
    )
    assert [(m.role, m.content, m.name, dict(m.metadata)) for m in built] == [
        (r.ROLE_USER, "hi", "", {}),
        (r.ROLE_ASSISTANT, "hello", "bot", {"k": "v"}),
        (r.ROLE_TOOL, "", "search", {"id": "7"}),
        (r.ROLE_SYSTEM, "be brief", "", {}),
    ]


def test_a_bad_message_is_an_invalid_argument_naming_its_index() -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        convert.message_inputs([{"role": "user", "content": "ok"}, {"role": "robot", "content": "x"}])
    assert caught.value.fields == ["messages[1].role"]
    assert isinstance(caught.value, ValueError)
    with pytest.raises(InvalidArgumentError) as caught:
        convert.message_inputs([{"role": "user", "content": 42}])
    assert caught.value.fields == ["messages[0].content"]


def test_stored_messages_convert_to_typed_and_seeds_forms() -> None:
    stored = r.Message(
        workspace_id="w",
        thread_id="t",
        seq=7,
        role=r.ROLE_ASSISTANT,
        content="Paris.",
        name="bot",
        metadata={"a": "b"},
        create_time=timestamp_pb2.Timestamp(seconds=1_700_000_000, nanos=123_456_789),
    )
    typed = convert.message(stored)
    assert typed == Message(
        seq=7,
        role="assistant",
        content="Paris.",
        name="bot",
        metadata={"a": "b"},
        create_time=datetime.datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=datetime.UTC),
        thread_id="t",
        workspace_id="w",
    )
    assert typed.to_dict() == convert.history_dict(stored) == {"role": "assistant", "content": "Paris."}


def test_durations_accept_timedeltas_and_seconds() -> None:
    assert convert.duration_to_pb(datetime.timedelta(hours=2)).seconds == 7200
    half = convert.duration_to_pb(1.5)
    assert (half.seconds, half.nanos) == (1, 500_000_000)


def test_append_results_and_contexts_say_how_they_were_served() -> None:
    resp = pb.AppendMessagesResponse(
        seqs=[3, 4],
        message_count=4,
        durability=r.DURABILITY_PERSISTED,
        replayed=True,
        serving=r.ServingInfo(tier=r.TIER_STORE, degraded=True),
    )
    result = convert.append_result(resp, "req-1")
    assert result.seqs == (3, 4) and result.message_count == 4 and result.replayed
    assert result.durability == "persisted" and result.request_id == "req-1"
    assert result.serving.tier == "store" and result.serving.degraded
    ctx = convert.context(pb.GetContextResponse(context="Previous conversation:\nuser: hi", message_count=1))
    assert str(ctx) == "Previous conversation:\nuser: hi" and ctx.serving.tier == "unspecified"


def stored(role: str, content: str = "x", name: str = "", **metadata: str) -> Message:
    return Message(1, role, content, name, metadata, datetime.datetime.now(datetime.UTC), "t", "w")


@pytest.mark.parametrize(
    "message",
    [
        HumanMessage(content="hi", name="ada"),
        AIMessage(content="hello"),
        SystemMessage(content="be brief"),
        ToolMessage(content="42", tool_call_id="call-1", name="calc"),
        AIMessage(content="", tool_calls=[{"name": "calc", "args": {"x": 1}, "id": "call-1", "type": "tool_call"}]),
    ],
    ids=["human", "ai", "system", "tool", "ai-tool-calls"],
)
def test_langchain_messages_round_trip(message: object) -> None:
    as_dict = to_chatmem(message)  # type: ignore[arg-type]
    back = to_langchain(stored(as_dict["role"], as_dict["content"], as_dict["name"], **as_dict["metadata"]))
    assert type(back) is type(message)
    assert back == message


def test_langchain_chat_messages_map_by_role_and_list_content_keeps_its_text() -> None:
    assert to_chatmem(ChatMessage(content="x", role="Assistant"))["role"] == "assistant"
    with pytest.raises(ValueError, match="cannot store"):
        to_chatmem(ChatMessage(content="x", role="narrator"))
    blocks = HumanMessage(content=[{"type": "text", "text": "look"}, {"type": "text", "text": " here"}])
    assert to_chatmem(blocks)["content"] == "look here"


def test_v2_fields_and_every_part_kind_convert_both_ways() -> None:
    parts = (
        TextPart("look"),
        Media("image/png", data=b"\x89PNG", size_bytes=4),
        ToolCall("c1", "calc", '{"x": 1}'),
        ToolResult("c1", (TextPart("2"), Media("image/jpeg", "https://x.example/a.jpg")), is_error=True),
        Reasoning("hmm", b"\x00sig\xff"),
        Reasoning(signature=b"blob", redacted=True),
    )
    sent = convert.message_input(
        MessageInput(
            "developer", parts=parts, envelope=Envelope("openai.chat", b"{}"), message_id="m-1", token_count=7
        ),
        "messages[0]",
    )
    assert sent.role == r.ROLE_DEVELOPER and sent.message_id == "m-1" and sent.token_count == 7
    assert sent.envelope == r.Envelope(format="openai.chat", raw=b"{}")
    assert [p.WhichOneof("kind") for p in sent.parts] == [
        "text",
        "media",
        "tool_call",
        "tool_result",
        "reasoning",
        "reasoning",
    ]
    back = r.Message(role=sent.role, parts=sent.parts, envelope=sent.envelope, message_id="m-1", token_count=7)
    typed = convert.message(back)
    assert typed.role == "developer" and typed.parts == parts
    assert typed.envelope == Envelope("openai.chat", b"{}") and (typed.message_id, typed.token_count) == ("m-1", 7)
    assert convert.message(r.Message(role=r.ROLE_USER, content="v1")).envelope is None
    plain = convert.message_input(MessageInput("user", "hi"), "m")
    assert not plain.parts and not plain.HasField("envelope") and plain.message_id == "" and plain.token_count == 0
