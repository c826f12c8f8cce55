"""Realistic message corpora for the format converters, and how a test parses them as each SDK does."""

from __future__ import annotations

import datetime
import json
import pathlib
from collections.abc import Iterable, Mapping
from typing import Any

from anthropic.types import Message as AnthropicMessage
from anthropic.types import MessageParam
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from openai.types.chat import ChatCompletionMessage, ChatCompletionMessageParam
from pydantic import TypeAdapter

from chatmem import Message, MessageInput
from chatmem import _convert as convert
from chatmem.v1 import resources_pb2 as r

DATA = pathlib.Path(__file__).parent / "data" / "formats"
OPENAI = json.loads((DATA / "openai_chat.json").read_text())
ANTHROPIC = json.loads((DATA / "anthropic.json").read_text())
PNG_1X1 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


def materialised(value: Any) -> Any:
    """Turn the lazy iterators pydantic leaves for ``Iterable`` fields of the SDKs' TypedDicts into lists."""
    if isinstance(value, Mapping):
        return {k: materialised(v) for k, v in value.items()}
    if isinstance(value, str | bytes | int | float | bool) or value is None:
        return value
    return [materialised(v) for v in value]


# Module-level: the lazy iterators a validation returns need their adapter alive while they are consumed.
OPENAI_PARAM: TypeAdapter[Any] = TypeAdapter(ChatCompletionMessageParam)
ANTHROPIC_PARAM: TypeAdapter[Any] = TypeAdapter(MessageParam)


def openai_parsed(message: Mapping[str, Any]) -> Any:
    """A message as the openai SDK parses it: a response's (``annotations`` is response-only) as ChatCompletionMessage."""
    if "annotations" in message:
        return ChatCompletionMessage.model_validate(message)
    return materialised(OPENAI_PARAM.validate_python(message))


def anthropic_parsed(message: Mapping[str, Any]) -> Any:
    """A message as the anthropic SDK parses it: a response as ``Message``, a param as ``MessageParam``."""
    if message.get("type") == "message":
        return AnthropicMessage.model_validate(message)
    return materialised(ANTHROPIC_PARAM.validate_python(message))


def stored(m: MessageInput, seq: int = 1) -> Message:
    """What the server returns for an appended message: fields 9-12 as sent, content filled from the text parts."""
    sent = convert.message_input(m, "messages[0]")
    text = "".join(p.text for p in sent.parts if p.WhichOneof("kind") == "text")
    back = r.Message(
        workspace_id="w",
        thread_id="t",
        seq=seq,
        role=sent.role,
        content=text or sent.content,
        name=sent.name,
        metadata=dict(sent.metadata),
        parts=list(sent.parts),
        message_id=sent.message_id,
        token_count=sent.token_count,
    )
    if sent.HasField("envelope"):
        back.envelope.CopyFrom(sent.envelope)
    back.create_time.FromDatetime(datetime.datetime(2026, 12, 2, tzinfo=datetime.UTC))
    return convert.message(back)


def stored_all(messages: Iterable[MessageInput]) -> list[Message]:
    """``stored`` for a thread."""
    return [stored(m, i) for i, m in enumerate(messages, 1)]


def langchain_corpus() -> list[BaseMessage]:
    """A LangChain conversation: developer prompt, parallel tool calls with usage, a failed tool, images, thinking."""
    return [
        SystemMessage(content="You are a travel assistant.", additional_kwargs={"__openai_role__": "developer"}),
        SystemMessage(content="Answer briefly.", id="sys-1"),
        HumanMessage(content="Weather in Paris and Tōkyō? 👋", name="ada", id="h-1"),
        AIMessage(
            content="",
            id="lc_run--0b1e-0",
            tool_calls=[
                {"name": "get_weather", "args": {"city": "Paris"}, "id": "call_Pa7rS1", "type": "tool_call"},
                {
                    "name": "get_weather",
                    "args": {"city": "Tokyo", "unit": "c"},
                    "id": "call_To9kY2",
                    "type": "tool_call",
                },
            ],
            invalid_tool_calls=[
                {
                    "name": "get_time",
                    "args": '{"tz": "Europe/Par',
                    "id": "call_Tm3",
                    "error": "bad JSON",
                    "type": "invalid_tool_call",
                }
            ],
            usage_metadata={"input_tokens": 311, "output_tokens": 57, "total_tokens": 368},
            response_metadata={
                "model_name": "gpt-4o-2024-08-06",
                "finish_reason": "tool_calls",
                "system_fingerprint": "fp_1",
            },
            additional_kwargs={"refusal": None},
        ),
        ToolMessage(content='{"temp_c": 18}', tool_call_id="call_Pa7rS1", name="get_weather", id="t-1"),
        ToolMessage(
            content="upstream timeout", tool_call_id="call_To9kY2", status="error", artifact={"retry": True}, id="t-2"
        ),
        ToolMessage(content="unknown tz", tool_call_id="call_Tm3", status="error", id="t-3"),
        AIMessage(
            content=[
                {"type": "thinking", "thinking": "Paris is cloudy; Tokyo failed.", "signature": "EqQBCkYIBxgCKkBv0mE3"},
                {"type": "text", "text": "Paris: 18 °C. Tokyo: unavailable."},
            ],
            id="lc_run--0b1e-1",
            usage_metadata={"input_tokens": 420, "output_tokens": 33, "total_tokens": 453},
            response_metadata={"model_name": "claude-sonnet-4-5", "stop_reason": "end_turn"},
        ),
        HumanMessage(
            content=[
                {"type": "text", "text": "Which city is this?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_1X1}"}},
                {"type": "image", "url": "https://upload.example.org/skyline.jpg", "mime_type": "image/jpeg"},
            ],
            id="h-2",
        ),
        FunctionMessage(content="sunny", name="legacy_weather", id="f-1"),
        ChatMessage(content="Noted.", role="assistant", id="c-1"),
    ]


def langchain_chunks() -> list[BaseMessage]:
    """A streamed answer: AIMessageChunks added up as RunnableWithMessageHistory adds them."""
    parts = [
        AIMessageChunk(content="Par", id="lc_run--7f2a"),
        AIMessageChunk(content="is.", id="lc_run--7f2a"),
        AIMessageChunk(
            content="",
            id="lc_run--7f2a",
            usage_metadata={"input_tokens": 12, "output_tokens": 2, "total_tokens": 14},
            response_metadata={"finish_reason": "stop"},
            chunk_position="last",
        ),
    ]
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    return [total]
