"""The OpenAI and Anthropic converters: lossless through the envelope, exact from parts for the common shapes."""

from __future__ import annotations

import base64
import dataclasses
import json
from typing import Any

import pytest
from anthropic.types import Message as AnthropicMessage
from openai.types.chat import ChatCompletionMessage

from chatmem import Media, Message, Reasoning, TextPart, ToolCall, ToolResult
from chatmem.formats.anthropic import from_anthropic, to_anthropic, to_anthropic_messages
from chatmem.formats.openai import from_openai, to_openai, to_openai_messages
from tests.formats_corpus import ANTHROPIC, OPENAI, PNG_1X1, anthropic_parsed, openai_parsed, stored, stored_all

OPENAI_ALL = OPENAI["canonical"] + OPENAI["sdk_shaped"]
ANTHROPIC_ALL = ANTHROPIC["canonical"] + ANTHROPIC["sdk_shaped"]


def without_envelope(m: Message) -> Message:
    return dataclasses.replace(m, envelope=None)


@pytest.mark.parametrize("original", OPENAI_ALL, ids=lambda m: m["role"])
def test_openai_messages_read_back_equal_through_the_envelope(original: dict[str, Any]) -> None:
    back = to_openai(stored(from_openai(original)))
    assert back == original
    assert openai_parsed(back) == openai_parsed(original)


@pytest.mark.parametrize("original", OPENAI["canonical"], ids=lambda m: m["role"])
def test_openai_common_shapes_rebuild_exactly_from_their_parts(original: dict[str, Any]) -> None:
    back = to_openai(without_envelope(stored(from_openai(original))))
    assert back == original
    assert openai_parsed(back) == openai_parsed(original)


def test_openai_parts_keep_ids_argument_strings_images_and_usage() -> None:
    calls = from_openai(OPENAI["sdk_shaped"][1], usage=OPENAI["usage"])
    assert list(calls.parts) == [
        ToolCall("call_Fl1", "search_flights", '{\n  "to": "LYS",\n  "sort": "price"\n}'),
        ToolCall("call_Ht2", "search_hotels", '{"city":"Lyon","nights":2}'),
        ToolCall("call_Wx3", "get_weather", '{"city":"Lyon"'),  # invalid JSON, kept as received
    ]
    assert calls.token_count == 57 and calls.message_id == "" and calls.content == ""
    assert calls.envelope is not None and calls.envelope.format == "openai.chat"
    assert json.loads(calls.envelope.raw) == OPENAI["sdk_shaped"][1]
    assert b" " not in calls.envelope.raw.split(b'"arguments"')[0], "the envelope is compact JSON"
    result = from_openai(OPENAI["sdk_shaped"][2])
    assert result.role == "tool" and result.content == "AF7640 89 EUR"
    assert list(result.parts) == [ToolResult("call_Fl1", (TextPart("AF7640 "), TextPart("89 EUR")))]
    picture = from_openai(OPENAI["canonical"][9])
    assert picture.content == "And this thumbnail?"
    assert picture.parts[1] == Media(mime_type="image/png", data=base64.b64decode(PNG_1X1))
    by_url = from_openai(OPENAI["sdk_shaped"][6])
    assert by_url.parts[1] == Media(mime_type="image/webp", uri="https://upload.example.org/brochure.webp")
    assert isinstance(by_url.parts[2], Media) and by_url.parts[2].mime_type == "audio/wav"
    assert from_openai(OPENAI["canonical"][0]).role == "developer"
    assert from_openai({"role": "user", "content": "hi"}, usage=OPENAI["usage"]).token_count == 0, (
        "usage is the reply's"
    )


def test_inline_media_over_the_limit_stays_in_the_envelope_only() -> None:
    big = base64.b64encode(b"\x89PNG" + bytes(70_000)).decode()
    original = {
        "role": "user",
        "content": [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{big}"}}],
    }
    m = from_openai(original)
    assert m.parts == ()
    assert to_openai(stored(m)) == original


def test_openai_roles_chatmem_lacks_are_refused() -> None:
    with pytest.raises(ValueError, match="critic"):
        from_openai({"role": "critic", "content": "meh"})


@pytest.mark.parametrize("original", ANTHROPIC_ALL, ids=lambda m: m["role"])
def test_anthropic_messages_read_back_equal_through_the_envelope(original: dict[str, Any]) -> None:
    back = to_anthropic(stored(from_anthropic(original)))
    assert back == original
    assert anthropic_parsed(back) == anthropic_parsed(original)


@pytest.mark.parametrize("original", ANTHROPIC["canonical"], ids=lambda m: m["role"])
def test_anthropic_common_shapes_rebuild_exactly_from_their_parts(original: dict[str, Any]) -> None:
    back = to_anthropic(without_envelope(stored(from_anthropic(original))))
    assert back == original
    assert anthropic_parsed(back) == anthropic_parsed(original)


def test_anthropic_parts_keep_thinking_signatures_results_and_the_response_id() -> None:
    reply = from_anthropic(ANTHROPIC["sdk_shaped"][1])
    assert reply.message_id == "msg_01XFDUDYJgAACzvnptvVoYEL" and reply.token_count == 97
    assert list(reply.parts) == [
        Reasoning("Search flights and hotels at once.", b"ErUBCkYIBxgCIkB+9Vb0"),
        TextPart("Searching."),
        ToolCall("toolu_01Fl", "search_flights", '{"to":"LYS","sort":"price","passengers":[{"age":36}]}'),
        ToolCall("toolu_02Ht", "search_hotels", "{}"),
    ]
    redacted = from_anthropic(ANTHROPIC["canonical"][3]).parts[0]
    assert redacted == Reasoning(
        signature=b"EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpP", redacted=True
    )
    results = from_anthropic(ANTHROPIC["canonical"][2])
    assert results.role == "tool" and results.content == "18 °C, cloudy\nupstream timeout"
    assert [p.is_error for p in results.parts if isinstance(p, ToolResult)] == [False, True]
    mixed = from_anthropic(ANTHROPIC["sdk_shaped"][2])
    assert mixed.role == "user" and mixed.content == "Also: I prefer the morning."
    first = mixed.parts[0]
    assert isinstance(first, ToolResult)
    assert first.parts == (TextPart("AF7640, 89 EUR"), Media("image/png", "https://cdn.example.org/af7640.png"))
    assert from_anthropic(ANTHROPIC["canonical"][0]).message_id == "", "a param has no id"
    with pytest.raises(ValueError, match="system"):
        from_anthropic({"role": "system", "content": "x"})


def test_an_openai_thread_reads_as_an_anthropic_request() -> None:
    system, messages = to_anthropic_messages(stored_all(from_openai(m) for m in OPENAI["canonical"]))
    assert system == "You are a travel assistant. Call tools for live data.\n\nAnswer in the user's language."
    assert messages[1] == {
        "role": "assistant",
        "content": [
            {"type": "tool_use", "id": "call_Pa7rS1", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "call_To9kY2", "name": "get_weather", "input": {"city": "Tokyo", "unit": "c"}},
        ],
    }
    # The two parallel results, one OpenAI tool message each, are one user turn for Anthropic.
    assert messages[2] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "call_Pa7rS1", "content": '{"temp_c": 18, "sky": "cloudy"}'},
            {"type": "tool_result", "tool_use_id": "call_To9kY2", "content": '{"temp_c": 24, "sky": "clear"}'},
        ],
    }
    assert messages[6]["content"][1] == {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": PNG_1X1},
    }
    for m in messages:
        anthropic_parsed(m)  # each is a valid MessageParam
    assert len(messages) == len(OPENAI["canonical"]) - 3


def test_an_anthropic_thread_reads_as_openai_messages() -> None:
    messages = to_openai_messages(stored_all(from_anthropic(m) for m in ANTHROPIC["canonical"]))
    assert messages[1] == {
        "role": "assistant",
        "content": "Let me check both.",
        "tool_calls": [
            {
                "id": "toolu_01Pa",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            },
            {
                "id": "toolu_02To",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Tokyo","unit":"c"}'},
            },
        ],
    }
    assert messages[2:4] == [
        {"role": "tool", "tool_call_id": "toolu_01Pa", "content": "18 °C, cloudy"},
        {"role": "tool", "tool_call_id": "toolu_02To", "content": "upstream timeout"},
    ]
    assert messages[4] == {"role": "assistant", "content": "Paris is 18 °C and cloudy; Tokyo's service timed out."}
    assert messages[5]["content"][2] == {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_1X1}"}}
    for m in messages:
        openai_parsed(m)
    with pytest.raises(ValueError, match="to_openai_messages"):
        to_openai(stored(from_anthropic(ANTHROPIC["canonical"][2])))


def test_plain_v1_messages_convert_to_both_formats() -> None:
    plain = stored(from_openai({"role": "user", "content": "hi"}))
    plain = dataclasses.replace(plain, parts=(), envelope=None)
    assert to_openai(plain) == {"role": "user", "content": "hi"}
    assert to_anthropic(plain) == {"role": "user", "content": "hi"}
    with pytest.raises(ValueError, match="system"):
        to_anthropic(dataclasses.replace(plain, role="system"))


def test_sdk_objects_are_taken_as_their_json_dump() -> None:
    reply = ChatCompletionMessage.model_validate(OPENAI["sdk_shaped"][1])
    back = to_openai(stored(from_openai(reply, usage=OPENAI["usage"])))
    assert ChatCompletionMessage.model_validate(back) == reply
    assert back["tool_calls"][2]["function"]["arguments"] == '{"city":"Lyon"'
    response = AnthropicMessage.model_validate(ANTHROPIC["sdk_shaped"][1])
    converted = from_anthropic(response)
    assert (converted.message_id, converted.token_count) == ("msg_01XFDUDYJgAACzvnptvVoYEL", 97)
    assert AnthropicMessage.model_validate(to_anthropic(stored(converted))) == response


def test_a_signature_that_is_not_text_rebuilds_as_base64() -> None:
    m = stored(from_anthropic({"role": "assistant", "content": "x"}))
    odd = dataclasses.replace(m, envelope=None, parts=(Reasoning("r", b"\xff\x00"), TextPart("x")))
    assert to_anthropic(odd)["content"][0] == {"type": "thinking", "thinking": "r", "signature": "/wA="}
