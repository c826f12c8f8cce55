"""ChatmemSession: the OpenAI Agents SDK's session scenarios and Runner runs with a scripted model, on every backend."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from typing import Any

import pytest
from agents import Agent, Runner, SessionSettings, TResponseInputItem, function_tool, set_tracing_disabled
from agents.memory import Session
from agents.testing import ScriptedModel
from openai.types.responses import ResponseFunctionToolCall, ResponseOutputMessage, ResponseOutputText

from chatmem import MemoryClient, Reasoning, SyncMemoryClient, TextPart, ToolCall, ToolResult
from chatmem.agents import ChatmemSession
from tests.conftest import Harness

pytestmark = pytest.mark.integration

set_tracing_disabled(True)  # the runs export no traces: there is no OpenAI account here


@pytest.fixture
async def memory(api: Harness) -> AsyncIterator[MemoryClient]:
    async with MemoryClient.connect(f"127.0.0.1:{api.app.port}", workspace_id=api.ws) as client:
        yield client


def text_message(content: str, item_id: str = "1") -> ResponseOutputMessage:
    """What the SDK's own tests make a model answer (``tests/test_responses.get_text_message``): always id "1"."""
    return ResponseOutputMessage(
        id=item_id,
        type="message",
        role="assistant",
        content=[ResponseOutputText(text=content, type="output_text", annotations=[], logprobs=[])],
        status="completed",
    )


# One of each kind of item a session holds, as the SDK passes them (plain JSON dicts).
CORPUS: list[Any] = [
    {"role": "developer", "content": "Answer in French."},
    {
        "type": "message",
        "role": "user",
        "content": [
            {"type": "input_text", "text": "Décris cette image"},
            {"type": "input_image", "image_url": "https://example.com/a.png", "detail": "auto"},
        ],
    },
    {
        "id": "rs_1",
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": "User wants a description."}],
        "encrypted_content": "gAAAAB-opaque==",
    },
    {
        "id": "fc_1",
        "type": "function_call",
        "call_id": "call_1",
        "name": "describe",
        "arguments": '{"url": "https://example.com/a.png" }',
        "status": "completed",
    },
    {"type": "function_call_output", "call_id": "call_1", "output": "a cat"},
    {
        "type": "computer_call",
        "id": "cu_1",
        "call_id": "call_2",
        "action": {"type": "screenshot"},
        "status": "completed",
        "pending_safety_checks": [],
    },
    {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": "Un chat.", "annotations": [], "logprobs": []}],
    },
]


async def test_chatmem_session_is_an_agents_session(memory: MemoryClient) -> None:
    assert isinstance(ChatmemSession(memory, "s"), Session)


async def test_direct_add_get_clear(memory: MemoryClient) -> None:
    session = ChatmemSession(memory, "direct_test", user_id="ada")
    items: list[TResponseInputItem] = [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi there!"},
    ]
    await session.add_items(items)
    assert await session.get_items() == items
    assert (await memory.get_thread("direct_test")).user_id == "ada"
    await session.clear_session()
    assert await session.get_items() == []
    assert await memory.count("direct_test") == 0
    await session.clear_session()  # clearing an empty session is fine


async def test_items_round_trip_exactly_and_fill_the_parts(memory: MemoryClient) -> None:
    session = ChatmemSession(memory, "corpus")
    await session.add_items(copy.deepcopy(CORPUS))
    assert await session.get_items() == CORPUS
    stored = await memory.get_history("corpus", typed=True)
    assert [m.role for m in stored] == ["developer", "user", "assistant", "assistant", "tool", "assistant", "assistant"]
    assert [m.message_id for m in stored] == ["", "", "rs_1", "fc_1", "", "cu_1", "msg_1"]
    assert all(m.envelope is not None and m.envelope.format == "openai.responses" for m in stored)
    assert stored[1].parts[0] == TextPart("Décris cette image")
    assert stored[2].parts == (Reasoning("User wants a description.", b"gAAAAB-opaque==", False),)
    assert stored[3].parts == (ToolCall("call_1", "describe", '{"url": "https://example.com/a.png" }'),)
    assert stored[4].parts == (ToolResult("call_1", (TextPart("a cat"),)),)
    assert stored[5].parts == ()
    assert stored[6].content == "Un chat."


async def test_pop_item(memory: MemoryClient) -> None:
    session = ChatmemSession(memory, "pop_test")
    assert await session.pop_item() is None
    items: list[TResponseInputItem] = [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi there!"},
        {"role": "user", "content": "How are you?"},
    ]
    await session.add_items(items)
    assert await session.pop_item() == items[2]
    assert await session.get_items() == items[:2]
    assert await session.pop_item() == items[1]
    assert await session.pop_item() == items[0]
    assert await session.pop_item() is None
    assert await session.get_items() == []
    await session.add_items(items[:1])  # seqs are never reused, but the session reads on as before
    assert await session.get_items() == items[:1]


async def test_pop_only_affects_its_session(memory: MemoryClient) -> None:
    one, two = ChatmemSession(memory, "session_1"), ChatmemSession(memory, "session_2")
    await one.add_items([{"role": "user", "content": "Session 1 message"}])
    await two.add_items(
        [{"role": "user", "content": "Session 2 message 1"}, {"role": "user", "content": "Session 2 message 2"}]
    )
    popped = await two.pop_item()
    assert popped is not None
    assert popped.get("content") == "Session 2 message 2"
    assert await one.get_items() == [{"role": "user", "content": "Session 1 message"}]
    assert await two.get_items() == [{"role": "user", "content": "Session 2 message 1"}]


async def test_get_items_with_limit_and_session_settings(memory: MemoryClient) -> None:
    session = ChatmemSession(memory, "count_test")
    items: list[TResponseInputItem] = [
        {
            "role": "user" if i % 2 == 0 else "assistant",
            "content": f"{'Message' if i % 2 == 0 else 'Response'} {i // 2 + 1}",
        }
        for i in range(6)
    ]
    await session.add_items(items)
    assert await session.get_items() == items
    assert await session.get_items(limit=2) == items[-2:]
    assert await session.get_items(limit=4) == items[-4:]
    assert await session.get_items(limit=10) == items
    assert await session.get_items(limit=0) == []
    limited = ChatmemSession(memory, "count_test", session_settings=SessionSettings(limit=3))
    assert await limited.get_items() == items[-3:]
    assert await limited.get_items(limit=5) == items[-5:]  # an explicit limit wins


async def test_unicode_and_json_special_characters(memory: MemoryClient) -> None:
    session = ChatmemSession(memory, "unicode")
    items: list[TResponseInputItem] = [
        {"role": "user", "content": 'こんにちは 😊 "quoted" \\ back\nslash'},
        {"role": "assistant", "content": "'); DROP TABLE messages; --"},
        {"role": "user", "content": '{"not": "json" '},
    ]
    await session.add_items(items)
    assert await session.get_items() == items


async def test_repeated_and_placeholder_ids_are_stored_not_refused(memory: MemoryClient) -> None:
    session = ChatmemSession(memory, "ids")
    first = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "content": [{"type": "output_text", "text": "a", "annotations": []}],
    }
    again = {**first, "content": [{"type": "output_text", "text": "b", "annotations": []}]}
    fake = {**first, "id": "__fake_id__"}
    await session.add_items([first, again])  # repeated within one call
    await session.add_items([again, fake])  # repeated across calls: the server refuses the id, the session stores on
    assert await session.get_items() == [first, again, again, fake]
    assert [m.message_id for m in await memory.get_history("ids", typed=True)] == ["msg_1", "", "", ""]
    assert await session.pop_item() == fake
    assert await session.pop_item() == again


async def test_concurrent_adds_keep_every_item(memory: MemoryClient) -> None:
    sessions = [ChatmemSession(memory, "concurrent") for _ in range(4)]
    await asyncio.gather(*(s.add_items([{"role": "user", "content": f"m{i}"}]) for i, s in enumerate(sessions)))
    assert sorted(str(item.get("content")) for item in await sessions[0].get_items()) == ["m0", "m1", "m2", "m3"]


async def test_concurrent_pops_each_remove_a_different_item(memory: MemoryClient) -> None:
    session = ChatmemSession(memory, "pops")
    items: list[TResponseInputItem] = [{"role": "user", "content": f"m{i}"} for i in range(4)]
    await session.add_items(items)
    popped = await asyncio.gather(*(session.pop_item() for _ in range(3)))
    assert sorted(str(p.get("content")) for p in popped if p is not None) == ["m1", "m2", "m3"]
    assert await session.get_items() == items[:1]


def user_texts(model_input: Any) -> list[str]:
    return [str(i["content"]) for i in model_input if isinstance(i, dict) and i.get("role") == "user"]


async def run_agent(method: str, agent: Agent[Any], text: str, session: ChatmemSession) -> Any:
    """Run a turn as ``Runner.run`` or ``Runner.run_streamed`` (consumed to the end), as the SDK's tests do."""
    if method == "run":
        return await Runner.run(agent, text, session=session)
    result = Runner.run_streamed(agent, text, session=session)
    async for _ in result.stream_events():
        pass
    return result


@pytest.mark.parametrize("method", ["run", "run_streamed"])
async def test_runner_two_turns_sees_the_first_turn(memory: MemoryClient, method: str) -> None:
    model = ScriptedModel()
    agent = Agent(name="test", model=model)
    session = ChatmemSession(memory, f"runner-{method}")
    model.enqueue([text_message("San Francisco")])
    first = await run_agent(method, agent, "What city is the Golden Gate Bridge in?", session)
    assert first.final_output == "San Francisco"
    model.enqueue([text_message("California")])  # the same id "1" again, as the SDK's own tests do
    second = await run_agent(method, agent, "What state is it in?", session)
    assert second.final_output == "California"
    last = model.calls[-1].input
    assert user_texts(last) == ["What city is the Golden Gate Bridge in?", "What state is it in?"]
    assert last[1]["role"] == "assistant"
    assert last[1]["content"][0]["text"] == "San Francisco"
    stored = await session.get_items()
    assert len(stored) == 4
    assert [i.get("role") for i in stored] == ["user", "assistant", "user", "assistant"]


async def test_runner_with_a_tool_call_keeps_call_and_output(memory: MemoryClient) -> None:
    @function_tool
    def get_weather(city: str) -> str:
        """Return the weather of a city."""
        return f"18 C in {city}"

    model = ScriptedModel()
    agent = Agent(name="test", model=model, tools=[get_weather])
    session = ChatmemSession(memory, "tools")
    model.enqueue(
        [
            ResponseFunctionToolCall(
                id="fc_9", call_id="call_9", type="function_call", name="get_weather", arguments='{"city":"Paris"}'
            )
        ]
    )
    model.enqueue([text_message("It is 18 C in Paris.", "msg_9")])
    result = await Runner.run(agent, "Weather in Paris?", session=session)
    assert result.final_output == "It is 18 C in Paris."
    stored = await memory.get_history("tools", typed=True)
    assert [m.role for m in stored] == ["user", "assistant", "tool", "assistant"]
    assert stored[1].parts == (ToolCall("call_9", "get_weather", '{"city":"Paris"}'),)
    assert stored[2].parts == (ToolResult("call_9", (TextPart("18 C in Paris"),)),)
    model.enqueue([text_message("Still 18 C.", "msg_10")])
    await Runner.run(agent, "And now?", session=session)
    kinds = [i.get("type", "message") for i in model.calls[-1].input]
    assert kinds == ["message", "function_call", "function_call_output", "message", "message"]


def run_sync_turns(target: str, workspace: str) -> tuple[str, list[str]]:
    model = ScriptedModel()
    agent = Agent(name="test", model=model)
    with SyncMemoryClient.connect(target, workspace_id=workspace) as client:
        session = ChatmemSession(client, "sync")
        model.enqueue([text_message("Hello")])
        Runner.run_sync(agent, "Hi there", session=session)
        model.enqueue([text_message("I remember you said hi")])
        result = Runner.run_sync(agent, "Do you remember what I said?", session=session)
        return str(result.final_output), user_texts(model.calls[-1].input)


async def test_run_sync_with_a_sync_client(api: Harness) -> None:
    output, seen = await asyncio.to_thread(run_sync_turns, f"127.0.0.1:{api.app.port}", api.ws)
    assert output == "I remember you said hi"
    assert seen == ["Hi there", "Do you remember what I said?"]


async def test_different_sessions_keep_separate_histories(memory: MemoryClient) -> None:
    model = ScriptedModel()
    agent = Agent(name="test", model=model)
    cats, dogs = ChatmemSession(memory, "cats"), ChatmemSession(memory, "dogs")
    model.enqueue([text_message("I like cats")])
    await Runner.run(agent, "I like cats", session=cats)
    model.enqueue([text_message("I like dogs")])
    await Runner.run(agent, "I like dogs", session=dogs)
    model.enqueue([text_message("Yes, you mentioned cats")])
    await Runner.run(agent, "What did I say I like?", session=cats)
    assert user_texts(model.calls[-1].input) == ["I like cats", "What did I say I like?"]
