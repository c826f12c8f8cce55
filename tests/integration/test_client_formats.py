"""OpenAI, Anthropic and LangChain threads read back equal on every backend, from the cache and after a miss."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest
import redis.asyncio as aioredis
from google.rpc import error_details_pb2
from langchain_core.messages import BaseMessage, HumanMessage
from langchain_core.messages.utils import message_chunk_to_message

from chatmem import ConflictError, MemoryClient, Message, MessageInput
from chatmem.formats.anthropic import from_anthropic, to_anthropic, to_anthropic_messages
from chatmem.formats.openai import from_openai, to_openai_messages
from chatmem.langchain import from_langchain, to_langchain_messages
from server.storage.local_cache import LocalCache
from server.storage.models import ThreadKey
from server.storage.redis.keys import KeySpace
from tests.conftest import Harness
from tests.formats_corpus import (
    ANTHROPIC,
    OPENAI,
    anthropic_parsed,
    langchain_chunks,
    langchain_corpus,
    openai_parsed,
)

pytestmark = pytest.mark.integration

OPENAI_THREAD = OPENAI["canonical"] + OPENAI["sdk_shaped"]
ANTHROPIC_THREAD = ANTHROPIC["canonical"] + ANTHROPIC["sdk_shaped"]
LANGCHAIN_THREAD = [message_chunk_to_message(m) for m in langchain_corpus() + langchain_chunks()]


@pytest.fixture
async def memory(api: Harness) -> AsyncIterator[MemoryClient]:
    async with MemoryClient.connect(f"127.0.0.1:{api.app.port}", workspace_id=api.ws) as client:
        yield client


def cached(api: Harness) -> bool:
    return api.app.cache is not None  # Redis, or on SQLite without Redis the in-process cache


async def miss(api: Harness, thread_ids: Sequence[str]) -> None:
    """Flush write_behind to the store and drop the cached windows, so the next read is a cache miss."""
    await api.drained()
    if isinstance(api.app.cache, LocalCache):
        for t in thread_ids:  # as an eviction would: the window is gone, the store still has everything
            await api.app.cache.trim_thread(ThreadKey(api.ws, t), 0, 0)
        return
    if not cached(api):
        return
    keys = KeySpace(api.app.settings.redis.key_prefix)
    redis = aioredis.Redis.from_url(str(api.app.settings.redis.url))
    try:
        assert await redis.delete(*(keys.thread(api.ws, t).msgs for t in thread_ids)) == len(thread_ids)
    finally:
        await redis.aclose()


def v2_fields(history: Sequence[Message]) -> list[tuple[Any, ...]]:
    return [(m.role, m.content, tuple(m.parts), m.envelope, m.message_id, m.token_count) for m in history]


THREADS: dict[str, tuple[list[Any], Callable[[Any], MessageInput]]] = {
    "oa": (OPENAI_THREAD, lambda m: from_openai(m, usage=OPENAI["usage"] if m["role"] == "assistant" else None)),
    "an": (ANTHROPIC_THREAD, from_anthropic),
    "lc": (LANGCHAIN_THREAD, from_langchain),
}


def check(thread_id: str, history: Sequence[Message]) -> None:
    """Assert that a thread read back equals what was appended, after each SDK's own parsing."""
    originals = THREADS[thread_id][0]
    if thread_id == "oa":
        back = to_openai_messages(history)
        assert back == originals
        assert [openai_parsed(m) for m in back] == [openai_parsed(m) for m in originals]
    elif thread_id == "an":
        back_an = [to_anthropic(m) for m in history]
        assert back_an == originals
        assert [anthropic_parsed(m) for m in back_an] == [anthropic_parsed(m) for m in originals]
    else:
        back_lc: list[BaseMessage] = to_langchain_messages(history)
        assert back_lc == originals
        assert [type(m) for m in back_lc] == [type(m) for m in originals]


async def test_three_formats_round_trip_through_the_cache_and_after_a_miss(api: Harness, memory: MemoryClient) -> None:
    for thread_id, (originals, convert) in THREADS.items():
        result = await memory.append_messages(thread_id, [convert(m) for m in originals])
        assert result.message_count == len(originals)

    first: dict[str, list[tuple[Any, ...]]] = {}
    for thread_id in THREADS:
        history = await memory.get_history(thread_id, typed=True)
        assert history.serving.tier == ("cache" if cached(api) else "store")
        check(thread_id, history)
        first[thread_id] = v2_fields(history)

    await miss(api, list(THREADS))
    for thread_id in THREADS:
        history = await memory.get_history(thread_id, typed=True)
        assert history.serving.tier == "store"
        check(thread_id, history)
        assert v2_fields(history) == first[thread_id], "the store returns what the cache did, byte for byte"
        listed = [m async for m in memory.list_messages(thread_id)]
        check(thread_id, listed)
        streamed = [m async for m in memory.stream_history(thread_id, chunk_size=4)]
        assert v2_fields(streamed) == first[thread_id]


async def test_cross_format_reads_keep_tool_call_ids_and_arguments(api: Harness, memory: MemoryClient) -> None:
    await memory.append_messages("an-x", [from_anthropic(m) for m in ANTHROPIC["canonical"]])
    await memory.append_messages("oa-x", [from_openai(m) for m in OPENAI["canonical"]])
    await miss(api, ["an-x", "oa-x"])
    as_openai = to_openai_messages(await memory.get_history("an-x", typed=True))
    assert as_openai[1]["tool_calls"][1]["id"] == "toolu_02To"
    assert as_openai[1]["tool_calls"][1]["function"]["arguments"] == '{"city":"Tokyo","unit":"c"}'
    assert [m["tool_call_id"] for m in as_openai if m["role"] == "tool"] == ["toolu_01Pa", "toolu_02To"]
    system, as_anthropic = to_anthropic_messages(await memory.get_history("oa-x", typed=True))
    assert system.startswith("You are a travel assistant.")
    assert [b["tool_use_id"] for b in as_anthropic[2]["content"]] == ["call_Pa7rS1", "call_To9kY2"]
    # GetContext and v1 readers see the text of every format.
    assert "18 °C, cloudy" in str(await memory.get_context(thread_id="an-x"))
    assert (await memory.get_history("oa-x"))[0] == {
        "role": "developer",
        "content": "You are a travel assistant. Call tools for live data.",
    }


async def test_a_repeated_langchain_id_is_a_conflict_naming_the_field(api: Harness, memory: MemoryClient) -> None:
    await memory.append_messages("dup", [from_langchain(HumanMessage(content="hi", id="h-1"))])
    with pytest.raises(ConflictError) as caught:
        await memory.append_messages(
            "dup",
            [from_langchain(HumanMessage(content="new")), from_langchain(HumanMessage(content="again", id="h-1"))],
        )
    bad = [d for d in caught.value.details if isinstance(d, error_details_pb2.BadRequest)]
    assert [v.field for d in bad for v in d.field_violations] == ["messages[1].message_id"]
    assert await memory.count("dup") == 1
