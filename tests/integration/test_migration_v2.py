"""A store written before message v2 (migrations 0007 and 0008) migrates in place and its rows read back."""

from __future__ import annotations

import pathlib
import sqlite3
import uuid

import asyncpg
import pytest

from chatmem.v1 import resources_pb2 as r
from chatmem.v1 import thread_memory_service_pb2 as pb
from devtools.postgres import PostgresProcess
from tests.conftest import exchange, make_settings, start_harness

pytestmark = pytest.mark.integration

# What migrations 0007 and 0008 add, taken away again: the schema as a v1 server left it.
UNDO = [
    "DROP INDEX messages_by_message_id",
    "ALTER TABLE messages DROP COLUMN message_id",
    "ALTER TABLE threads DROP COLUMN parent_thread_id",
    "ALTER TABLE threads DROP COLUMN fork_seq",
    "ALTER TABLE threads DROP COLUMN compacted_through",
    "ALTER TABLE threads DROP COLUMN summary",
    "ALTER TABLE threads DROP COLUMN compact_request_id",
    "DELETE FROM schema_migrations WHERE version >= 7",
]


async def write_v1(settings: object, ws: str) -> None:
    h = await start_harness(settings)  # type: ignore[arg-type]
    try:
        for i in range(3):
            await h.threads.AppendMessages(
                pb.AppendMessagesRequest(workspace_id=ws, thread_id="old", messages=exchange(i))
            )
    finally:
        await h.close()


async def read_back_and_use_v2(settings: object, ws: str) -> None:
    h = await start_harness(settings)  # type: ignore[arg-type]
    try:
        got = await h.threads.GetHistory(pb.GetHistoryRequest(workspace_id=ws, thread_id="old"))
        assert [(m.seq, m.content) for m in got.messages] == [
            (2 * i + k + 1, f"{'question' if k == 0 else 'answer'} {i}") for i in range(3) for k in range(2)
        ]
        assert all(not m.parts and not m.message_id for m in got.messages)
        v2 = r.MessageInput(role=r.ROLE_ASSISTANT, parts=[r.Part(text="v2")], message_id="new-1", token_count=3)
        await h.threads.AppendMessages(pb.AppendMessagesRequest(workspace_id=ws, thread_id="old", messages=[v2]))
        fork = await h.threads.ForkThread(pb.ForkThreadRequest(workspace_id=ws, thread_id="old", new_thread_id="f"))
        assert fork.copied_messages == 7 and fork.thread.parent_thread_id == "old"
        listed = await h.threads.ListMessages(pb.ListMessagesRequest(workspace_id=ws, thread_id="f"))
        assert listed.messages[-1].message_id == "new-1" and listed.messages[-1].parts[0].text == "v2"
    finally:
        await h.close()


async def test_sqlite_rows_of_a_v1_store_migrate_in_place(tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / "v1.db")
    settings = make_settings(sqlite_path=path)
    await write_v1(settings, "w")
    with sqlite3.connect(path) as db:
        for statement in UNDO:
            db.execute(statement)
    await read_back_and_use_v2(settings, "w")


async def test_postgres_rows_of_a_v1_store_migrate_in_place(pg_proc: PostgresProcess) -> None:
    database = f"v1_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(pg_proc.url)
    try:
        await admin.execute(f'CREATE DATABASE "{database}"')
    finally:
        await admin.close()
    url = pg_proc.url.rsplit("/", 1)[0] + f"/{database}"
    settings = make_settings(database_url=url)
    await write_v1(settings, "w")
    conn = await asyncpg.connect(url)
    try:
        for statement in UNDO:
            await conn.execute(statement)
    finally:
        await conn.close()
    await read_back_and_use_v2(settings, "w")
