"""Retention on SQLite: idle threads, batched trims of old messages, and the in-process sweep lease."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator
from typing import Any

from server.storage.models import (
    ThreadInfo,
    ThreadKey,
    Trimmed,
)
from server.storage.sql.sqlite.db import (
    THREAD_COLS,
    SqliteDatabase,
    thread_of,
)


class SqliteRetention:
    """RetentionStore on SQLite.

    Args:
        db: the shared connection.
    """

    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db
        self._sweeping = False

    async def idle_threads(self, cutoff_us: int, after: ThreadInfo | None, limit: int) -> list[ThreadInfo]:
        """Return threads last changed before ``cutoff_us``, oldest change first, after the cursor thread."""
        cond = ""
        args: list[Any] = [cutoff_us]
        if after is not None:
            cond = "AND (update_time, workspace_id, thread_id) > (?, ?, ?)"
            args += [after.update_time_us, after.workspace_id, after.thread_id]

        def run() -> list[ThreadInfo]:
            rows = self._db.connection().execute(
                f"SELECT {THREAD_COLS} FROM threads WHERE update_time < ? {cond} "
                "ORDER BY update_time, workspace_id, thread_id LIMIT ?",
                (*args, limit),
            )
            return [thread_of(r) for r in rows]

        return await self._db.call(run)

    async def trim_messages(self, cutoff_us: int, limit: int) -> list[Trimmed]:
        """Delete up to ``limit`` messages created before ``cutoff_us``; lower their threads' counts."""

        def run(db: sqlite3.Connection) -> list[Trimmed]:
            found = db.execute(
                "SELECT workspace_id, thread_id, seq FROM messages WHERE create_time < ? ORDER BY create_time LIMIT ?",
                (cutoff_us, limit),
            ).fetchall()
            per_thread: dict[ThreadKey, int] = {}
            for ws, th, seq in found:
                db.execute("DELETE FROM messages WHERE workspace_id = ? AND thread_id = ? AND seq = ?", (ws, th, seq))
                key = ThreadKey(ws, th)
                per_thread[key] = per_thread.get(key, 0) + 1
            out = []
            for key, n in per_thread.items():
                row = db.execute(
                    "UPDATE threads SET message_count = MAX(message_count - ?, 0) "
                    "WHERE workspace_id = ? AND thread_id = ? RETURNING incarnation",
                    (n, key.workspace_id, key.thread_id),
                ).fetchone()
                out.append(Trimmed(key, row[0] if row else 0, n))
            return out

        return await self._db.call(self._db.tx, run)

    @contextlib.asynccontextmanager
    async def retention_lease(self) -> AsyncIterator[bool]:
        """One sweep at a time in this process (the only process that owns the file)."""
        if self._sweeping:
            yield False
            return
        self._sweeping = True
        try:
            yield True
        finally:
            self._sweeping = False
