"""SyncMemoryClient: the same calls without await, outside any event loop; a clear refusal inside one."""

from __future__ import annotations

import asyncio
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from chatmem import NotFoundError, SyncMemoryClient, UnavailableError
from chatmem.v1 import thread_memory_service_pb2 as pb
from devtools.ports import free_port
from tests.conftest import Harness

pytestmark = pytest.mark.integration

ROOT = pathlib.Path(__file__).resolve().parents[2]


def seeds_session(target: str, workspace: str) -> dict[str, object]:
    """What a user of the seeds does, with the blocking client; runs in a thread with no event loop."""
    seen: dict[str, object] = {}
    with SyncMemoryClient.connect(target, workspace_id=workspace) as memory:
        memory.append("conv_abc", "user", "What is the capital of France?", user_id="ada")
        memory.append("conv_abc", "assistant", "Paris.")
        seen["history"] = memory.get_history("conv_abc")
        seen["typed"] = [(m.seq, m.role) for m in memory.get_history("conv_abc", typed=True)]
        seen["count"] = memory.count("conv_abc")
        seen["thread"] = memory.get_thread("conv_abc").user_id
        seen["threads"] = [t.thread_id for t in memory.list_threads("ada")]
        memory.append_messages("conv_abc", [{"role": "user", "content": f"m{i}"} for i in range(3, 11)])
        seen["pages"] = [len(p.items) for p in memory.list_messages("conv_abc", page_size=4).pages()]
        seen["reverse"] = [m.seq for m in memory.list_messages("conv_abc", reverse=True)][:3]
        seen["stream"] = [m.seq for m in memory.stream_history("conv_abc", chunk_size=3)]
        partial = memory.stream_history("conv_abc", chunk_size=2)
        seen["first_two"] = [next(partial).seq, next(partial).seq]
        partial.close()  # abandoning a stream closes it on the client's loop
        memory.set_preferences("ada", {"tone": "brief", "units": "metric"})
        seen["prefs"] = memory.get_preferences("ada")
        seen["pref_keys"] = [p.key for p in memory.get_preferences("ada", typed=True)]
        seen["context"] = memory.get_context(thread_id="conv_abc", user_id="ada", max_messages=1).text
        seen["deleted_prefs"] = memory.delete_preferences("ada", all_keys=True)
        seen["title"] = memory.update_thread("conv_abc", title="Geography").title
        raw = memory.raw.threads.GetHistory(
            pb.GetHistoryRequest(workspace_id=workspace, thread_id="conv_abc"), timeout=5
        )
        seen["raw"] = len(raw.messages)
        seen["cleared"] = memory.clear("conv_abc")
        seen["after_clear"] = memory.get_history("conv_abc")
        try:
            memory.delete_thread("conv_abc")
        except NotFoundError as exc:
            seen["not_found"] = exc.code.name
    memory.close()  # a second close does nothing
    return seen


async def test_every_sync_method_from_a_thread_without_an_event_loop(sqlite_api: Harness) -> None:
    seen = await asyncio.to_thread(seeds_session, f"127.0.0.1:{sqlite_api.app.port}", sqlite_api.ws)
    assert seen == {
        "history": [
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "Paris."},
        ],
        "typed": [(1, "user"), (2, "assistant")],
        "count": 2,
        "thread": "ada",
        "threads": ["conv_abc"],
        "pages": [4, 4, 2],
        "reverse": [10, 9, 8],
        "stream": list(range(1, 11)),
        "first_two": [1, 2],
        "prefs": {"tone": "brief", "units": "metric"},
        "pref_keys": ["tone", "units"],
        "context": "Previous conversation:\nuser: m10\n\nUser preferences:\ntone: brief\nunits: metric",
        "deleted_prefs": 2,
        "title": "Geography",
        "raw": 10,
        "cleared": 10,
        "after_clear": [],
        "not_found": "NOT_FOUND",
    }


async def test_sync_methods_refuse_to_block_a_running_event_loop(sqlite_api: Harness) -> None:
    client = SyncMemoryClient.connect(f"127.0.0.1:{sqlite_api.app.port}")
    try:
        for call in (
            lambda: client.get_history("t"),
            lambda: client.append("t", "user", "hi"),
            lambda: client.get_preferences("u"),
            lambda: next(client.stream_history("t")),
            lambda: list(client.list_threads("u")),
        ):
            with pytest.raises(RuntimeError, match=r"inside a running event loop.*MemoryClient"):
                call()
    finally:
        await asyncio.to_thread(client.close)


@pytest.fixture
def server_process(tmp_path: pathlib.Path) -> Iterator[str]:
    """A real server process, so that a plain (loop-less) test can talk to it."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS__", "DATABASE__", "GRPC__", "MEMORY__"))}
    env.update(GRPC__ADDRESS=f"127.0.0.1:{port}", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "server"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    target = f"127.0.0.1:{port}"
    try:
        with SyncMemoryClient.connect(target, timeout=1) as probe:
            for _ in range(200):
                try:
                    probe.count("warm-up")
                    break
                except UnavailableError:
                    time.sleep(0.05)
        yield target
    finally:
        proc.terminate()
        proc.wait(15)


def test_sync_client_in_plain_blocking_code(server_process: str) -> None:
    with SyncMemoryClient.connect(server_process) as memory:
        memory.append("plain", "user", "no event loop here")
        assert memory.get_history("plain") == [{"role": "user", "content": "no event loop here"}]
        assert repr(memory) == f"SyncMemoryClient('{server_process}', workspace_id='')"
        assert memory.aio.workspace_id == ""


async def test_an_async_caller_can_reach_a_sync_clients_loop_without_blocking(sqlite_api: Harness) -> None:
    # What the LangChain adapter does for async callers: submit to the client's loop, await the future.
    client = SyncMemoryClient.connect(f"127.0.0.1:{sqlite_api.app.port}", workspace_id=sqlite_api.ws)
    try:
        await asyncio.wrap_future(client._submit(client.aio.append("t", "user", "hi")))
        got = await asyncio.wrap_future(client._submit(client.aio.get_history("t")))
        assert got == [{"role": "user", "content": "hi"}]
    finally:
        await asyncio.to_thread(client.close)
