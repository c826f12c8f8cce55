"""ChatmemChatMessageHistory: a LangChain chat history in a chatmem thread, sync and async, in RunnableWithMessageHistory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables.history import RunnableWithMessageHistory

from chatmem import MemoryClient, SyncMemoryClient
from chatmem.langchain import ChatmemChatMessageHistory
from tests.conftest import Harness

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore:RunnableWithMessageHistory is deprecated")]


class Prompts(BaseCallbackHandler):
    """Records what the model was shown, so that the test sees the history going in."""

    def __init__(self) -> None:
        self.seen: list[list[str]] = []

    def on_chat_model_start(self, serialized: dict[str, Any], messages: list[list[BaseMessage]], **kw: Any) -> None:
        self.seen.append([f"{m.type}: {m.content}" for m in messages[0]])


def chain_with_history(client: MemoryClient | SyncMemoryClient, prompts: Prompts) -> RunnableWithMessageHistory:
    prompt = ChatPromptTemplate.from_messages(
        [("system", "You are brief."), MessagesPlaceholder("history"), ("human", "{question}")]
    )
    model = FakeListChatModel(responses=["Paris.", "About 2 million."], callbacks=[prompts])
    return RunnableWithMessageHistory(
        prompt | model,
        lambda session_id: ChatmemChatMessageHistory(client, session_id, user_id="ada"),
        input_messages_key="question",
        history_messages_key="history",
    )


EXPECTED_PROMPTS = [
    ["system: You are brief.", "human: What is the capital of France?"],
    [
        "system: You are brief.",
        "human: What is the capital of France?",
        "ai: Paris.",
        "human: How many people live there?",
    ],
]
EXPECTED_HISTORY = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "How many people live there?"},
    {"role": "assistant", "content": "About 2 million."},
]


def sync_conversation(target: str, workspace: str) -> tuple[list[list[str]], list[dict[str, str]], str]:
    prompts = Prompts()
    with SyncMemoryClient.connect(target, workspace_id=workspace) as client:
        chain = chain_with_history(client, prompts)
        config: Any = {"configurable": {"session_id": "s-sync"}}
        chain.invoke({"question": "What is the capital of France?"}, config=config)
        answer = chain.invoke({"question": "How many people live there?"}, config=config)
        return prompts.seen, client.get_history("s-sync"), str(answer.content)


async def test_runnable_with_message_history_sync(api: Harness) -> None:
    prompts, history, answer = await asyncio.to_thread(sync_conversation, f"127.0.0.1:{api.app.port}", api.ws)
    assert answer == "About 2 million."
    assert prompts == EXPECTED_PROMPTS
    assert history == EXPECTED_HISTORY


@pytest.fixture
async def memory(api: Harness) -> AsyncIterator[MemoryClient]:
    async with MemoryClient.connect(f"127.0.0.1:{api.app.port}", workspace_id=api.ws) as client:
        yield client


async def test_runnable_with_message_history_async(memory: MemoryClient) -> None:
    prompts = Prompts()
    chain = chain_with_history(memory, prompts)
    config: Any = {"configurable": {"session_id": "s-async"}}
    await chain.ainvoke({"question": "What is the capital of France?"}, config=config)
    answer = await chain.ainvoke({"question": "How many people live there?"}, config=config)
    assert answer.content == "About 2 million."
    assert prompts.seen == EXPECTED_PROMPTS
    assert await memory.get_history("s-async") == EXPECTED_HISTORY
    assert (await memory.get_thread("s-async")).user_id == "ada"


async def test_async_methods_with_a_sync_client_do_not_block_the_loop(api: Harness) -> None:
    client = SyncMemoryClient.connect(f"127.0.0.1:{api.app.port}", workspace_id=api.ws)
    try:
        prompts = Prompts()
        chain = chain_with_history(client, prompts)
        config: Any = {"configurable": {"session_id": "s-mixed"}}
        await chain.ainvoke({"question": "What is the capital of France?"}, config=config)
        await chain.ainvoke({"question": "How many people live there?"}, config=config)
        assert prompts.seen == EXPECTED_PROMPTS
        history = ChatmemChatMessageHistory(client, "s-mixed")
        assert [m.content for m in await history.aget_messages()][-1] == "About 2 million."
        await history.aclear()
        assert await history.aget_messages() == []
    finally:
        await asyncio.to_thread(client.close)


def direct_calls(target: str, workspace: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with SyncMemoryClient.connect(target, workspace_id=workspace) as client:
        history = ChatmemChatMessageHistory(client, "direct", limit=3)
        history.add_messages(
            [
                SystemMessage(content="be brief"),
                HumanMessage(content="2+2?"),
                AIMessage(content="", tool_calls=[{"name": "calc", "args": {"q": "2+2"}, "id": "c1"}]),
                ToolMessage(content="4", tool_call_id="c1", name="calc"),
                AIMessage(content="4."),
            ]
        )
        history.add_user_message("thanks")
        history.add_messages([])  # no call, no error
        out["window"] = history.messages
        out["all"] = ChatmemChatMessageHistory(client, "direct").messages
        out["stored"] = client.count("direct")
        history.clear()
        out["after_clear"] = history.messages
        history.clear()  # clearing a missing thread is fine
    return out


async def test_adapter_methods_directly_keep_roles_tool_calls_and_the_window(api: Harness) -> None:
    out = await asyncio.to_thread(direct_calls, f"127.0.0.1:{api.app.port}", api.ws)
    assert out["stored"] == 6
    assert [type(m).__name__ for m in out["window"]] == ["ToolMessage", "AIMessage", "HumanMessage"]
    everything = out["all"]
    assert [type(m).__name__ for m in everything] == [
        "SystemMessage",
        "HumanMessage",
        "AIMessage",
        "ToolMessage",
        "AIMessage",
        "HumanMessage",
    ]
    assert everything[2].tool_calls == [{"name": "calc", "args": {"q": "2+2"}, "id": "c1", "type": "tool_call"}]
    assert (everything[3].tool_call_id, everything[3].name, everything[3].content) == ("c1", "calc", "4")
    assert out["after_clear"] == []


async def test_sync_methods_with_an_async_client_say_what_to_use(memory: MemoryClient) -> None:
    history = ChatmemChatMessageHistory(memory, "t")
    for blocking in (lambda: history.messages, lambda: history.add_messages([HumanMessage("x")]), history.clear):
        with pytest.raises(RuntimeError, match="needs a SyncMemoryClient"):
            blocking()
    await history.aadd_messages([HumanMessage("hi"), AIMessage("hello")])
    assert [m.content for m in await history.aget_messages()] == ["hi", "hello"]
    await history.aclear()
    assert await memory.count("t") == 0


async def test_astream_stores_the_turn_as_human_and_ai_messages(api: Harness, memory: MemoryClient) -> None:
    # The reply streams as AIMessageChunks, whose type is "AIMessageChunk"; the history must still store it.
    prompts = Prompts()
    chain = chain_with_history(memory, prompts)
    config: Any = {"configurable": {"session_id": "s-stream"}}
    streamed = [chunk async for chunk in chain.astream({"question": "What is the capital of France?"}, config=config)]
    assert len(streamed) > 1 and all(isinstance(c, AIMessageChunk) for c in streamed)
    assert "".join(str(c.content) for c in streamed) == "Paris."
    answer = [chunk async for chunk in chain.astream({"question": "How many people live there?"}, config=config)]
    assert "".join(str(c.content) for c in answer) == "About 2 million."
    assert prompts.seen == EXPECTED_PROMPTS, "the second turn saw the first, streamed one"
    assert await memory.get_history("s-stream") == EXPECTED_HISTORY
    back = await ChatmemChatMessageHistory(memory, "s-stream").aget_messages()
    assert [type(m) for m in back] == [HumanMessage, AIMessage, HumanMessage, AIMessage]
    reply = back[1]
    assert reply == AIMessage(content="Paris.", id=reply.id) and reply.id
    typed = await memory.get_history("s-stream", typed=True)
    assert typed[1].message_id == reply.id and typed[1].envelope is not None
    assert typed[1].envelope.format == "langchain"


def sync_stream(target: str, workspace: str) -> tuple[str, list[BaseMessage]]:
    with SyncMemoryClient.connect(target, workspace_id=workspace) as client:
        chain = chain_with_history(client, Prompts())
        config: Any = {"configurable": {"session_id": "s-sync-stream"}}
        text = "".join(
            str(c.content) for c in chain.stream({"question": "What is the capital of France?"}, config=config)
        )
        return text, ChatmemChatMessageHistory(client, "s-sync-stream").messages


async def test_stream_with_a_sync_client_stores_the_turn(api: Harness) -> None:
    text, back = await asyncio.to_thread(sync_stream, f"127.0.0.1:{api.app.port}", api.ws)
    assert text == "Paris."
    assert [(type(m), m.content) for m in back] == [
        (HumanMessage, "What is the capital of France?"),
        (AIMessage, "Paris."),
    ]
