"""Thread rows on SQLite: metadata, listing, patches and deletes with tombstones."""

from __future__ import annotations

import sqlite3
from typing import Any

from server.storage.models import (
    Fence,
    Repair,
    ThreadCursor,
    ThreadInfo,
    ThreadKey,
    ThreadPatch,
)
from server.storage.sql.sqlite.db import (
    THREAD_COLS,
    SqliteDatabase,
    clock_us,
    thread_of,
)
from server.storage.sql.sqlite.repairs import mark


class SqliteThreads:
    """ThreadStore on SQLite.

    Args:
        db: the shared connection.
    """

    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    async def get_thread(self, key: ThreadKey) -> ThreadInfo | None:
        """Return a thread's metadata, or None."""

        def run() -> ThreadInfo | None:
            row = (
                self._db.connection()
                .execute(
                    f"SELECT {THREAD_COLS} FROM threads WHERE workspace_id = ? AND thread_id = ?",
                    (key.workspace_id, key.thread_id),
                )
                .fetchone()
            )
            return thread_of(row) if row else None

        return await self._db.call(run)

    async def list_threads(
        self, workspace_id: str, user_id: str, after: ThreadCursor | None, limit: int
    ) -> list[ThreadInfo]:
        """Keyset page of a user's threads, newest first."""
        cond = ""
        args: list[Any] = [workspace_id, user_id]
        if after is not None:
            cond = "AND (create_time < ? OR (create_time = ? AND thread_id < ?))"
            args += [after.create_time_us, after.create_time_us, after.thread_id]

        def run() -> list[ThreadInfo]:
            rows = self._db.connection().execute(
                f"SELECT {THREAD_COLS} FROM threads WHERE workspace_id = ? AND user_id = ? {cond} "
                "ORDER BY create_time DESC, thread_id DESC LIMIT ?",
                (*args, limit),
            )
            return [thread_of(r) for r in rows]

        return await self._db.call(run)

    async def update_thread(
        self, key: ThreadKey, patch: ThreadPatch, *, repair: Fence | None = None
    ) -> ThreadInfo | None:
        """Apply a patch; ttl_seconds 0 restores the default TTL."""

        def run(db: sqlite3.Connection) -> ThreadInfo | None:
            ttl_sql = "ttl_seconds"
            args: list[Any] = []
            if patch.ttl_seconds is not None:
                ttl_sql = "?"
                args.append(patch.ttl_seconds or None)
            db.execute(
                f"UPDATE threads SET title = COALESCE(?, title), ttl_seconds = {ttl_sql}, "
                "pinned = COALESCE(?, pinned), update_time = ? WHERE workspace_id = ? AND thread_id = ?",
                (
                    patch.title,
                    *args,
                    None if patch.pinned is None else int(patch.pinned),
                    clock_us(),
                    key.workspace_id,
                    key.thread_id,
                ),
            )
            row = db.execute(
                f"SELECT {THREAD_COLS} FROM threads WHERE workspace_id = ? AND thread_id = ?",
                (key.workspace_id, key.thread_id),
            ).fetchone()
            if row is not None and repair is not None:
                mark(db, [Repair("t", key.workspace_id, key.thread_id)], repair)
            return thread_of(row) if row else None

        return await self._db.call(self._db.tx, run)

    async def delete_thread(
        self,
        key: ThreadKey,
        *,
        tombstone_incarnation: int = 0,
        repair: Fence | None = None,
        idle_before_us: int | None = None,
    ) -> tuple[ThreadInfo | None, int]:
        """Delete a thread, its messages and request records, and leave a tombstone.

        With ``idle_before_us``, a thread changed since then is left alone and nothing is written.

        Returns:
            (the deleted row or None, messages deleted).
        """

        def run(db: sqlite3.Connection) -> tuple[ThreadInfo | None, int]:
            where = (key.workspace_id, key.thread_id)
            row = db.execute(
                f"SELECT {THREAD_COLS} FROM threads WHERE workspace_id = ? AND thread_id = ?", where
            ).fetchone()
            thread = thread_of(row) if row else None
            if idle_before_us is not None and (thread is None or thread.update_time_us >= idle_before_us):
                return None, 0
            count = 0
            if thread is not None:
                db.execute("DELETE FROM threads WHERE workspace_id = ? AND thread_id = ?", where)
                count = db.execute("DELETE FROM messages WHERE workspace_id = ? AND thread_id = ?", where).rowcount
                db.execute("DELETE FROM append_requests WHERE workspace_id = ? AND thread_id = ?", where)
            incarnation = max(tombstone_incarnation, thread.incarnation if thread else 0)
            if incarnation:
                db.execute(
                    "INSERT INTO thread_tombstones VALUES (?, ?, ?, ?) ON CONFLICT (workspace_id, thread_id) "
                    "DO UPDATE SET incarnation = MAX(incarnation, excluded.incarnation), "
                    "delete_time = excluded.delete_time",
                    (*where, incarnation, clock_us()),
                )
            if repair is not None:
                mark(db, [Repair("t", key.workspace_id, key.thread_id)], repair)
            return thread, count

        return await self._db.call(self._db.tx, run)
