"""The write_behind flush on SQLite: outbox entries written as plan_flush says, in one transaction."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Sequence

from server.storage.models import (
    NewThreadOptions,
    QueuedAppend,
    ThreadKey,
)
from server.storage.sql.planner import count_inserted, first_entries, plan_flush
from server.storage.sql.sqlite.db import (
    INSERT_MESSAGE,
    SqliteDatabase,
    clock_us,
    message_row,
)


class SqliteOutbox:
    """OutboxSink on SQLite.

    Args:
        db: the shared connection.
    """

    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    async def apply_queued(self, entries: Sequence[QueuedAppend]) -> int:
        """Write outbox entries idempotently; skip deleted incarnations. Returns the messages inserted."""
        return await self._db.call(self._db.tx, functools.partial(self._apply_queued, entries))

    def _apply_queued(self, entries: Sequence[QueuedAppend], db: sqlite3.Connection) -> int:
        dead: dict[ThreadKey, int] = {}
        for e in first_entries(entries):
            row = db.execute(
                "SELECT incarnation FROM thread_tombstones WHERE workspace_id = ? AND thread_id = ?",
                (e.key.workspace_id, e.key.thread_id),
            ).fetchone()
            if row is not None:
                dead[e.key] = row[0]
        known: dict[tuple[ThreadKey, str], int] = {}
        for e in entries:
            if e.request_id and (e.key, e.request_id) not in known:
                row = db.execute(
                    "SELECT first_seq FROM append_requests WHERE workspace_id = ? AND thread_id = ? AND request_id = ?",
                    (e.key.workspace_id, e.key.thread_id, e.request_id),
                ).fetchone()
                if row is not None:
                    known[(e.key, e.request_id)] = row[0]
        plan = plan_flush(entries, dead, known)
        for e in plan.new_threads:
            opts = e.new_thread or NewThreadOptions()
            created = e.messages[0].create_time_us if e.messages else clock_us()
            db.execute(
                "INSERT INTO threads (workspace_id, thread_id, user_id, title, ttl_seconds, pinned, message_count, "
                "last_seq, incarnation, create_time, update_time) VALUES (?, ?, ?, ?, ?, 0, 0, 0, ?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                (e.key.workspace_id, e.key.thread_id, opts.user_id, opts.title, opts.ttl_seconds, e.incarnation,
                 created, created),
            )  # fmt: skip
        inserted = [
            (k, m.seq)
            for k, m in plan.message_rows
            if db.execute(INSERT_MESSAGE + " ON CONFLICT DO NOTHING", message_row(k, m)).rowcount
        ]
        db.executemany(
            "INSERT INTO append_requests VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            [
                (e.key.workspace_id, e.key.thread_id, e.request_id, e.first_seq, len(e.messages), e.message_count)
                for e in plan.request_rows
            ],
        )
        now = clock_us()
        for key, (top, n) in count_inserted(inserted).items():
            db.execute(
                "UPDATE threads SET last_seq = MAX(last_seq, ?), message_count = message_count + ?, "
                "update_time = ? WHERE workspace_id = ? AND thread_id = ?",
                (top, n, now, key.workspace_id, key.thread_id),
            )
        return len(inserted)
