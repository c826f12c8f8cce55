"""The OpenAI Responses item converter and chatmem-mcp's options: parts of each item kind, rebuilds, credentials."""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

import pytest
from openai.types.responses import ResponseFunctionToolCall

from chatmem import Media, Reasoning, TextPart, ToolCall, ToolResult
from chatmem.formats.anthropic import from_anthropic
from chatmem.formats.openai import from_openai
from chatmem.formats.responses import from_responses, to_responses, to_responses_items
from chatmem.mcp.__main__ import connect_options, parse_args
from tests.formats_corpus import PNG_1X1, stored

ITEMS: list[Any] = [
    {"role": "user", "content": "hi"},
    {
        "type": "message",
        "role": "user",
        "content": [
            {"type": "input_image", "image_url": f"data:image/png;base64,{PNG_1X1}", "detail": "low"},
            {"type": "input_file", "file_id": "file-1", "filename": "notes.pdf"},
        ],
    },
    {"type": "function_call_output", "call_id": "c1", "output": [{"type": "input_text", "text": "ok"}]},
    {"type": "custom_tool_call", "id": "ct_1", "call_id": "c2", "name": "grep", "input": "x|y"},
    {"type": "reasoning", "id": "rs_2", "summary": [], "encrypted_content": "sealed"},
    {"type": "item_reference", "id": "msg_0"},
    {"type": "local_shell_call_output", "id": "ls_1", "output": "done"},
    {"id": "msg_2", "type": "message", "role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]},
]


@pytest.mark.parametrize("item", ITEMS, ids=lambda i: str(i.get("type", "easy")))
def test_items_read_back_equal_through_the_envelope(item: dict[str, Any]) -> None:
    assert to_responses(stored(from_responses(item))) == [item]


def test_parts_of_each_kind() -> None:
    m = [from_responses(i) for i in ITEMS]
    assert m[0].parts == (TextPart("hi"),) and m[0].role == "user"
    assert m[1].parts == (
        Media("image/png", data=base64.b64decode(PNG_1X1)),
        Media("application/pdf", uri="file-1"),
    )
    assert (m[2].role, m[2].parts, m[2].content) == ("tool", (ToolResult("c1", (TextPart("ok"),)),), "ok")
    assert (m[3].parts, m[3].message_id) == ((ToolCall("c2", "grep", "x|y"),), "ct_1")
    assert m[4].parts == (Reasoning("", b"sealed", True),), "encrypted reasoning without text is redacted"
    assert (m[5].role, m[5].parts, m[5].message_id) == ("assistant", (), "msg_0")
    assert (m[6].role, m[6].parts) == ("tool", ())
    assert (m[7].role, m[7].parts) == ("assistant", ()), "a refusal stays in the envelope only"


def test_an_sdk_output_item_is_stored_as_its_json() -> None:
    call = ResponseFunctionToolCall(id="fc_1", call_id="c", type="function_call", name="f", arguments="{}")
    m = from_responses(call)
    assert m.parts == (ToolCall("c", "f", "{}"),)
    assert to_responses(stored(m)) == [call.model_dump(mode="json")]


def test_other_formats_rebuild_as_items() -> None:
    openai_call = {
        "role": "assistant",
        "content": "Checking.",
        "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}],
    }
    thread = [
        stored(from_openai({"role": "user", "content": "hi"})),
        stored(from_openai(openai_call)),
        stored(from_openai({"role": "tool", "tool_call_id": "call_1", "content": "42"})),
        stored(
            from_anthropic({"role": "assistant", "content": [{"type": "thinking", "thinking": "t", "signature": "s"}]})
        ),
    ]
    assert to_responses_items(thread) == [
        {"type": "message", "role": "user", "content": "hi"},
        {"type": "message", "role": "assistant", "content": "Checking."},
        {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": '{"a":1}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "42"},
    ]
    plain = dataclasses.replace(stored(from_openai({"role": "user", "content": "x"})), envelope=None, parts=())
    assert to_responses(plain) == [{"type": "message", "role": "user", "content": "x"}]


def test_mcp_credentials_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setenv("CHATMEM_API_KEY", "secret")
    monkeypatch.setenv("CHATMEM_WORKSPACE", "acme")
    args = parse_args(["--target", "db:443", "--tls"])
    assert (args.target, args.workspace, args.transport) == ("db:443", "acme", "stdio")
    assert connect_options(args) == {"workspace_id": "acme", "api_key": "secret", "tls": True}
    ca = tmp_path / "ca.pem"
    ca.write_bytes(b"PEM")
    monkeypatch.delenv("CHATMEM_API_KEY")
    options = connect_options(parse_args(["--ca-file", str(ca), "--workspace", "w2"]))
    assert options == {"workspace_id": "w2", "root_certificates": b"PEM"}
