"""The LangChain converters: every BaseMessage subclass and chunk class round-trips, by class and not by type."""

from __future__ import annotations

import dataclasses

import pytest
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessageChunk,
    FunctionMessageChunk,
    HumanMessage,
    HumanMessageChunk,
    RemoveMessage,
    SystemMessage,
    SystemMessageChunk,
    ToolMessage,
    ToolMessageChunk,
)
from langchain_core.messages.utils import message_chunk_to_message

from chatmem import Media, Reasoning, TextPart, ToolCall, ToolResult
from chatmem.formats.anthropic import from_anthropic
from chatmem.formats.openai import from_openai
from chatmem.langchain import from_langchain, role_of, to_chatmem, to_langchain, to_langchain_messages
from tests.formats_corpus import ANTHROPIC, OPENAI, langchain_chunks, langchain_corpus, stored, stored_all

CHUNKS: list[BaseMessage] = [
    *langchain_chunks(),
    HumanMessageChunk(content="typed fast", id="hc-1"),
    SystemMessageChunk(content="be brief"),
    ToolMessageChunk(content="42", tool_call_id="call_1", id="tc-1"),
    FunctionMessageChunk(content="sunny", name="weather"),
    ChatMessageChunk(content="ok", role="user"),
]


@pytest.mark.parametrize("original", langchain_corpus(), ids=lambda m: type(m).__name__)
def test_langchain_messages_read_back_equal(original: BaseMessage) -> None:
    back = to_langchain(stored(from_langchain(original)))
    assert type(back) is type(original)
    assert back == original


@pytest.mark.parametrize("chunk", CHUNKS, ids=lambda m: type(m).__name__)
def test_chunks_are_stored_as_the_message_they_add_up_to(chunk: BaseMessage) -> None:
    converted = from_langchain(chunk)
    assert converted.role == role_of(message_chunk_to_message(chunk))
    back = to_langchain(stored(converted))
    expected = message_chunk_to_message(chunk)
    assert type(back) is type(expected) and type(back) is not type(chunk)
    assert back == expected
    assert to_chatmem(chunk)["role"] == converted.role, "the v1 form maps chunks by class too"


def test_a_streamed_reply_keeps_its_id_text_and_usage() -> None:
    converted = from_langchain(langchain_chunks()[0])
    assert (converted.role, converted.content, converted.message_id, converted.token_count) == (
        "assistant",
        "Paris.",
        "lc_run--7f2a",
        2,
    )
    back = to_langchain(stored(converted))
    assert isinstance(back, AIMessage) and back.usage_metadata == {
        "input_tokens": 12,
        "output_tokens": 2,
        "total_tokens": 14,
    }


def test_langchain_parts_are_typed_for_other_readers() -> None:
    corpus = langchain_corpus()
    assert from_langchain(corpus[0]).role == "developer"
    calls = from_langchain(corpus[3])
    assert list(calls.parts) == [
        ToolCall("call_Pa7rS1", "get_weather", '{"city":"Paris"}'),
        ToolCall("call_To9kY2", "get_weather", '{"city":"Tokyo","unit":"c"}'),
        ToolCall("call_Tm3", "get_time", '{"tz": "Europe/Par'),
    ]
    assert calls.token_count == 57 and calls.message_id == "lc_run--0b1e-0"
    failed = from_langchain(corpus[5])
    assert list(failed.parts) == [ToolResult("call_To9kY2", (TextPart("upstream timeout"),), is_error=True)]
    assert failed.content == "upstream timeout"
    thinking = from_langchain(corpus[7])
    assert list(thinking.parts) == [
        Reasoning("Paris is cloudy; Tokyo failed.", b"EqQBCkYIBxgCKkBv0mE3"),
        TextPart("Paris: 18 °C. Tokyo: unavailable."),
    ]
    images = from_langchain(corpus[8]).parts
    assert isinstance(images[1], Media) and images[1].data.startswith(b"\x89PNG")
    assert images[2] == Media("image/jpeg", "https://upload.example.org/skyline.jpg")
    assert from_langchain(corpus[9]).role == "tool" and from_langchain(corpus[9]).name == "legacy_weather"
    assert from_langchain(corpus[2]).message_id == "h-1"
    with pytest.raises(ValueError, match="cannot store"):
        from_langchain(RemoveMessage(id="x"))


@pytest.mark.parametrize(
    "original",
    [
        HumanMessage(content="hi", name="ada", id="h-1"),
        AIMessage(content="hello"),
        SystemMessage(content="You are brief.", additional_kwargs={"__openai_role__": "developer"}),
        AIMessage(
            content="Checking.",
            id="a-1",
            tool_calls=[
                {"name": "calc", "args": {"x": 1}, "id": "call-1", "type": "tool_call"},
                {"name": "calc", "args": {"x": 2}, "id": "call-2", "type": "tool_call"},
            ],
        ),
        ToolMessage(content="42", tool_call_id="call-1"),
        ToolMessage(content="division by zero", tool_call_id="call-2", status="error"),
    ],
    ids=["human", "ai", "developer", "ai-tool-calls", "tool", "tool-error"],
)
def test_common_langchain_shapes_rebuild_exactly_from_their_parts(original: BaseMessage) -> None:
    back = to_langchain(dataclasses.replace(stored(from_langchain(original)), envelope=None))
    assert type(back) is type(original)
    assert back == original


def test_an_openai_thread_reads_as_langchain_messages() -> None:
    messages = to_langchain_messages(stored_all(from_openai(m) for m in OPENAI["canonical"]))
    assert [type(m).__name__ for m in messages[:6]] == [
        "SystemMessage",
        "SystemMessage",
        "HumanMessage",
        "AIMessage",
        "ToolMessage",
        "ToolMessage",
    ]
    assert messages[0].additional_kwargs == {"__openai_role__": "developer"}
    call = messages[3]
    assert isinstance(call, AIMessage)
    assert [(c["id"], c["args"]) for c in call.tool_calls] == [
        ("call_Pa7rS1", {"city": "Paris"}),
        ("call_To9kY2", {"city": "Tokyo", "unit": "c"}),
    ]
    assert isinstance(messages[4], ToolMessage) and messages[4].tool_call_id == "call_Pa7rS1"
    assert messages[7].content[1] == {
        "type": "image",
        "url": "https://upload.example.org/skyline.jpg",
        "mime_type": "image/jpeg",
    }


def test_an_anthropic_thread_reads_as_langchain_messages() -> None:
    messages = to_langchain_messages(stored_all(from_anthropic(m) for m in ANTHROPIC["canonical"]))
    assert isinstance(messages[1], AIMessage)
    assert messages[1].content == [
        {
            "type": "thinking",
            "thinking": "Two cities, so two parallel get_weather calls.",
            "signature": "EqQBCkYIBxgCKkBv0mE3Xq+Yc7r2Jw==/sig",
        },
        {"type": "text", "text": "Let me check both."},
    ]
    assert [c["id"] for c in messages[1].tool_calls] == ["toolu_01Pa", "toolu_02To"]
    results = messages[2:4]
    assert [(m.tool_call_id, m.status) for m in results if isinstance(m, ToolMessage)] == [
        ("toolu_01Pa", "success"),
        ("toolu_02To", "error"),
    ]
    with pytest.raises(ValueError, match="to_langchain_messages"):
        to_langchain(stored(from_anthropic(ANTHROPIC["canonical"][2])))


def test_an_ai_message_chunk_in_a_v1_history_still_maps_to_assistant() -> None:
    assert to_chatmem(AIMessageChunk(content="x"))["role"] == "assistant"
