"""ThreadContextProvider: the seeds' invoking()/invoked() flow over a real server, and stateless when it is gone."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest

from chatmem import InvalidArgumentError, MemoryClient, RetryPolicy, ThreadContextProvider
from devtools.ports import free_port
from tests.conftest import Harness, make_settings, start_harness

pytestmark = pytest.mark.integration


@pytest.fixture
async def memory(api: Harness) -> AsyncIterator[MemoryClient]:
    async with MemoryClient.connect(f"127.0.0.1:{api.app.port}", workspace_id=api.ws) as client:
        yield client


async def test_invoking_then_invoked_builds_the_seeds_context(memory: MemoryClient) -> None:
    await memory.set_preferences("ada", {"language": "English", "tone": "brief"})
    provider = ThreadContextProvider(memory, thread_id="conv-1", user_id="ada")
    assert await provider.invoking() == "User preferences:\nlanguage: English\ntone: brief"
    await provider.invoked("Hi! I'm Ada.", "Hello Ada, how can I help?")
    await provider.invoked("What's my name?", "Ada.")
    assert await provider.invoking() == (
        "Previous conversation:\n"
        "user: Hi! I'm Ada.\n"
        "assistant: Hello Ada, how can I help?\n"
        "user: What's my name?\n"
        "assistant: Ada.\n"
        "\n"
        "User preferences:\n"
        "language: English\n"
        "tone: brief"
    )
    thread = await memory.get_thread("conv-1")
    assert thread.user_id == "ada" and thread.message_count == 4, "each exchange is stored, owned by the user"


async def test_limits_bound_the_block(memory: MemoryClient) -> None:
    provider = ThreadContextProvider(memory, thread_id="conv-1", max_messages=2)
    for i in range(3):
        await provider.invoked(f"question {i}", f"answer {i}")
    assert await provider.invoking() == "Previous conversation:\nuser: question 2\nassistant: answer 2"
    tight = ThreadContextProvider(memory, thread_id="conv-1", max_chars=45)
    assert await tight.invoking() == "Previous conversation:\nassistant: answer 2"


async def test_no_thread_means_no_thread_memory(memory: MemoryClient) -> None:
    await memory.set_preferences("ada", {"tone": "brief"})
    provider = ThreadContextProvider(memory, user_id="ada")
    await provider.invoked("hello", "hi")  # nothing to store it in
    assert await provider.invoking() == "User preferences:\ntone: brief"
    assert [t async for t in memory.list_threads("ada")] == []


async def test_no_user_means_no_preferences(memory: MemoryClient) -> None:
    await memory.set_preferences("ada", {"tone": "brief"})
    provider = ThreadContextProvider(memory, thread_id="conv-2")
    await provider.invoked("hello", "hi")
    assert await provider.invoking() == "Previous conversation:\nuser: hello\nassistant: hi"
    assert (await memory.get_thread("conv-2")).user_id == ""


async def test_neither_means_an_empty_context_without_a_call() -> None:
    # A client whose server does not exist: any call would fail, so the provider must not make one.
    async with MemoryClient.connect(f"127.0.0.1:{free_port()}") as client:
        provider = ThreadContextProvider(client)
        assert await provider.invoking() == ""
        await provider.invoked("hello", "hi")


async def test_server_stopped_degrades_to_stateless_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    h = await start_harness(make_settings())
    target = f"127.0.0.1:{h.app.port}"
    fast = RetryPolicy(max_attempts=2, initial_backoff_s=0.01)
    async with MemoryClient.connect(target, workspace_id=h.ws, retry=fast) as client:
        provider = ThreadContextProvider(client, thread_id="conv-1", user_id="ada")
        await provider.invoked("remember me", "I will")
        assert await provider.invoking() == "Previous conversation:\nuser: remember me\nassistant: I will"
        await h.close()  # the server goes away mid-conversation

        with caplog.at_level(logging.WARNING, logger="chatmem.context"):
            assert await provider.invoking() == ""
            await provider.invoked("still there?", "running without memory")
        warnings = [r.getMessage() for r in caplog.records if r.name == "chatmem.context"]
        assert len(warnings) == 2
        assert "running without memory" in warnings[0] and "UNAVAILABLE" in warnings[0]
        assert "not stored" in warnings[1]


async def test_a_bad_id_is_a_bug_and_is_raised_not_swallowed(memory: MemoryClient) -> None:
    provider = ThreadContextProvider(memory, thread_id="not a valid id")
    with pytest.raises(InvalidArgumentError):
        await provider.invoking()
    with pytest.raises(InvalidArgumentError):
        await provider.invoked("a", "b")
