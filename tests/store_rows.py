"""Direct looks into a test server's durable store (PostgreSQL or its SQLite file), and backdating for retention tests."""

from __future__ import annotations

import datetime
import sqlite3
import time
from typing import Any

import asyncpg

from tests.conftest import Harness


def _pg_sql(sql: str) -> str:
    # The helpers below write SQLite's ? placeholders; PostgreSQL wants $1, $2, ...
    parts = sql.split("?")
    return "".join(p + (f"${i + 1}" if i < len(parts) - 1 else "") for i, p in enumerate(parts))


async def query(h: Harness, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Run one statement on the server's store directly; return its rows (empty for a write)."""
    db = h.app.settings.database
    if db.url:
        conn = await asyncpg.connect(db.url)
        try:
            return [tuple(r) for r in await conn.fetch(_pg_sql(sql), *args)]
        finally:
            await conn.close()
    lite = sqlite3.connect(db.sqlite_path, timeout=10.0, isolation_level=None)
    try:
        return list(lite.execute(sql, args).fetchall())
    finally:
        lite.close()


def _time(h: Harness, days_ago: float) -> Any:
    at = time.time() - days_ago * 86400
    if h.app.settings.database.url:
        return datetime.datetime.fromtimestamp(at, datetime.UTC)
    return int(at * 1_000_000)


async def threads(h: Harness, ws: str, user_id: str | None = None) -> list[str]:
    """The thread ids the store holds in a workspace (of one user, if given), sorted."""
    if user_id is None:
        rows = await query(h, "SELECT thread_id FROM threads WHERE workspace_id = ? ORDER BY thread_id", ws)
    else:
        rows = await query(
            h, "SELECT thread_id FROM threads WHERE workspace_id = ? AND user_id = ? ORDER BY thread_id", ws, user_id
        )
    return [r[0] for r in rows]


async def seqs(h: Harness, ws: str, thread_id: str) -> list[int]:
    """The seqs of a thread's messages in the store."""
    rows = await query(
        h, "SELECT seq FROM messages WHERE workspace_id = ? AND thread_id = ? ORDER BY seq", ws, thread_id
    )
    return [r[0] for r in rows]


async def preference_keys(h: Harness, ws: str, user_id: str) -> list[str]:
    """The preference keys the store holds for a user."""
    rows = await query(
        h, "SELECT key FROM preferences WHERE workspace_id = ? AND user_id = ? ORDER BY key", ws, user_id
    )
    return [r[0] for r in rows]


async def backdate_thread(h: Harness, ws: str, thread_id: str, days: float) -> None:
    """Make a thread look last changed ``days`` ago."""
    await query(
        h, "UPDATE threads SET update_time = ? WHERE workspace_id = ? AND thread_id = ?", _time(h, days), ws, thread_id
    )


async def backdate_messages(h: Harness, ws: str, thread_id: str, up_to_seq: int, days: float) -> None:
    """Make a thread's messages up to ``up_to_seq`` look created ``days`` ago."""
    await query(
        h,
        "UPDATE messages SET create_time = ? WHERE workspace_id = ? AND thread_id = ? AND seq <= ?",
        _time(h, days),
        ws,
        thread_id,
        up_to_seq,
    )
