"""Long threads: a 20,000-message stream in order, resumed from a seq, on PostgreSQL and SQLite."""

from __future__ import annotations

import pathlib
import sqlite3
from collections.abc import AsyncIterator

import asyncpg
import pytest

from chatmem.v1 import resources_pb2 as r
from chatmem.v1 import thread_memory_service_pb2 as pb
from tests.conftest import Harness, start_harness
from tests.integration.conftest import backend_settings

pytestmark = pytest.mark.integration

TOTAL = 20_000
BATCH = 100


@pytest.fixture(params=["postgres+redis", "sqlite"])
async def store_api(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> AsyncIterator[Harness]:
    h = await start_harness(backend_settings(request, request.param, tmp_path))
    yield h
    await h.close()


async def test_stream_of_20000_messages_is_complete_ordered_and_resumable(store_api: Harness) -> None:
    h = store_api
    for start in range(0, TOTAL, BATCH):
        await h.threads.AppendMessages(
            pb.AppendMessagesRequest(
                workspace_id=h.ws,
                thread_id="long",
                messages=[r.MessageInput(role=r.ROLE_USER, content=f"m{i}") for i in range(start, start + BATCH)],
            )
        )
    req = pb.StreamHistoryRequest(workspace_id=h.ws, thread_id="long", chunk_size=1000)
    seen = 0
    chunks = 0
    async for chunk in h.threads.StreamHistory(req):
        chunks += 1
        for m in chunk.messages:
            seen += 1
            assert m.seq == seen and m.content == f"m{seen - 1}"
    assert seen == TOTAL
    assert chunks == TOTAL // 1000
    resumed = pb.StreamHistoryRequest(workspace_id=h.ws, thread_id="long", after_seq=12_345)
    tail = [m.seq async for c in h.threads.StreamHistory(resumed) for m in c.messages]
    assert tail == list(range(12_346, TOTAL + 1))
    window = await h.threads.GetHistory(pb.GetHistoryRequest(workspace_id=h.ws, thread_id="long"))
    assert [m.seq for m in window.messages] == list(range(TOTAL - 49, TOTAL + 1))


async def _forget_encodings(h: Harness, thread_id: str, first: int, last: int) -> int:
    """Clear the stored encoded column of some rows (as rows written before migration 0005 have it); count them."""
    db = h.app.settings.database
    where = "workspace_id = {} AND thread_id = {} AND seq BETWEEN {} AND {} AND encoded IS NOT NULL"
    if db.url:
        conn = await asyncpg.connect(db.url)
        try:
            status = await conn.execute(
                "UPDATE messages SET encoded = NULL WHERE " + where.format("$1", "$2", "$3", "$4"),
                h.ws,
                thread_id,
                first,
                last,
            )
        finally:
            await conn.close()
        return int(status.split()[-1])
    with sqlite3.connect(db.sqlite_path) as lite:
        sql = "UPDATE messages SET encoded = NULL WHERE " + where.format("?", "?", "?", "?")
        return lite.execute(sql, (h.ws, thread_id, first, last)).rowcount


async def test_rows_without_stored_encoding_read_the_same(store_api: Harness) -> None:
    h = store_api
    for start in range(0, 300, BATCH):
        await h.threads.AppendMessages(
            pb.AppendMessagesRequest(
                workspace_id=h.ws,
                thread_id="old",
                messages=[
                    r.MessageInput(role=r.ROLE_USER, content=f"m{i}", name="n", metadata={"k": str(i)})
                    for i in range(start, start + BATCH)
                ],
            )
        )
    await h.drained()
    stream = pb.StreamHistoryRequest(workspace_id=h.ws, thread_id="old", chunk_size=64)
    window = pb.GetHistoryRequest(workspace_id=h.ws, thread_id="old", limit=200)  # beyond the cache window
    before = [m async for c in h.threads.StreamHistory(stream) for m in c.messages]
    recent = (await h.threads.GetHistory(window)).messages
    assert await _forget_encodings(h, "old", 50, 280) == 231
    after = [m async for c in h.threads.StreamHistory(stream) for m in c.messages]
    assert after == before and len(after) == 300
    assert [(m.seq, m.content, m.name, m.metadata["k"]) for m in after] == [
        (i + 1, f"m{i}", "n", str(i)) for i in range(300)
    ]
    assert (await h.threads.GetHistory(window)).messages == recent


@pytest.fixture(params=["postgres+redis", "sqlite"])
async def small_frames(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> AsyncIterator[Harness]:
    settings = backend_settings(request, request.param, tmp_path)
    settings.limits.stream_frame_bytes = FRAME_BYTES
    h = await start_harness(settings)
    yield h
    await h.close()


FRAME_BYTES = 64 * 1024
# Content lengths around the framing's varint boundaries (1, 2 and 3 bytes), and past the frame limit.
SIZES = [1, 90, 120, 126, 127, 128, 200, 16_300, 16_383, 16_384, 16_500, 40_000, 70_000, 3]


async def test_stream_frames_every_length_within_chunk_and_frame_limits(small_frames: Harness) -> None:
    """A stream page is framed by the store (PostgreSQL frames it in SQL): it must match ListMessages byte
    for byte, with no response over the chunk size or the frame limit unless it holds one bigger message."""
    h = small_frames
    contents = [("x" * n) for n in SIZES * 2]
    for start in range(0, len(contents), 5):
        await h.threads.AppendMessages(
            pb.AppendMessagesRequest(
                workspace_id=h.ws,
                thread_id="sizes",
                messages=[r.MessageInput(role=r.ROLE_USER, content=c) for c in contents[start : start + 5]],
            )
        )
    await h.drained()
    listed = await h.threads.ListMessages(
        pb.ListMessagesRequest(workspace_id=h.ws, thread_id="sizes", page_size=len(contents))
    )
    for chunk_size in (1, 4, 1000):  # 1: every message but the biggest framed by the store alone
        req = pb.StreamHistoryRequest(workspace_id=h.ws, thread_id="sizes", chunk_size=chunk_size)
        streamed = []
        async for chunk in h.threads.StreamHistory(req):
            framed = pb.StreamHistoryResponse(messages=chunk.messages).ByteSize()
            assert len(chunk.messages) <= chunk_size
            assert framed <= FRAME_BYTES or len(chunk.messages) == 1
            streamed += chunk.messages
        assert [m.content for m in streamed] == contents
        assert [m.SerializeToString() for m in streamed] == [m.SerializeToString() for m in listed.messages]
