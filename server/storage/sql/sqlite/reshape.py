"""Fork, truncate and compact on SQLite, each in one IMMEDIATE transaction on the store's one connection."""

from __future__ import annotations

import sqlite3

from server.errors import ThreadExistsError, ThreadNotFoundError
from server.storage.codec import reseat
from server.storage.models import (
    CompactResult,
    Fence,
    ForkResult,
    NewThreadOptions,
    Repair,
    ThreadInfo,
    ThreadKey,
    TruncateResult,
)
from server.storage.sql.rules import check_compaction, check_expected
from server.storage.sql.sqlite.db import (
    INSERT_MESSAGE,
    MSG_COLS,
    THREAD_COLS,
    SqliteDatabase,
    clock_us,
    message_of,
    message_row,
    thread_of,
)
from server.storage.sql.sqlite.repairs import mark

_WHERE = "workspace_id = ? AND thread_id = ?"


def _thread(db: sqlite3.Connection, key: ThreadKey) -> ThreadInfo | None:
    row = db.execute(f"SELECT {THREAD_COLS} FROM threads WHERE {_WHERE}", (key.workspace_id, key.thread_id)).fetchone()
    return thread_of(row) if row else None


def _existing(db: sqlite3.Connection, key: ThreadKey) -> ThreadInfo:
    thread = _thread(db, key)
    if thread is None:
        raise ThreadNotFoundError(key.thread_id)
    return thread


class SqliteReshape:
    """ReshapeStore on SQLite.

    Args:
        db: the shared connection and its worker thread.
    """

    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    async def fork_thread(
        self, source: ThreadKey, target: ThreadKey, through_seq: int | None, options: NewThreadOptions
    ) -> ForkResult:
        """Copy the source's messages up to through_seq into a new thread, renumbered from 1 (O(n) rows)."""

        def run(db: sqlite3.Connection) -> ForkResult:
            parent = _existing(db, source)
            upto = parent.last_seq if through_seq is None else through_seq
            found = _thread(db, target)
            if found is not None:
                if found.parent_thread_id == source.thread_id and found.fork_seq == upto:
                    return ForkResult(found, found.message_count, True)
                raise ThreadExistsError(target.thread_id)
            rows = db.execute(
                f"SELECT {MSG_COLS} FROM messages WHERE {_WHERE} AND seq <= ? ORDER BY seq",
                (source.workspace_id, source.thread_id, upto),
            ).fetchall()
            copies = [reseat(target.workspace_id, target.thread_id, i + 1, message_of(r)) for i, r in enumerate(rows)]
            now = clock_us()
            db.execute(
                "INSERT INTO threads (workspace_id, thread_id, user_id, title, ttl_seconds, pinned, message_count, "
                "last_seq, incarnation, create_time, update_time, parent_thread_id, fork_seq) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    target.workspace_id, target.thread_id, options.user_id or parent.user_id,
                    options.title or parent.title, parent.ttl_seconds, int(parent.pinned), len(copies), len(copies),
                    self._db.fresh_incarnation(db, target, now), now, now, source.thread_id, upto,
                ),
            )  # fmt: skip
            db.executemany(INSERT_MESSAGE, [message_row(target, m) for m in copies])
            return ForkResult(_existing(db, target), len(copies), False)

        return await self._db.call(self._db.tx, run)

    async def truncate_thread(
        self,
        key: ThreadKey,
        after_seq: int,
        expected_last_seq: int | None,
        keep: int,
        *,
        repair: Fence | None = None,
    ) -> TruncateResult:
        """Delete the messages after after_seq, returning the newest ``keep`` of them and every id removed."""

        def run(db: sqlite3.Connection) -> TruncateResult:
            thread = _existing(db, key)
            check_expected(thread, expected_last_seq)
            args = (key.workspace_id, key.thread_id, after_seq)
            newest = db.execute(
                f"SELECT {MSG_COLS} FROM messages WHERE {_WHERE} AND seq > ? ORDER BY seq DESC LIMIT ?", (*args, keep)
            ).fetchall()
            ids = db.execute(
                f"SELECT message_id FROM messages WHERE {_WHERE} AND seq > ? AND message_id IS NOT NULL", args
            ).fetchall()
            count = db.execute(f"DELETE FROM messages WHERE {_WHERE} AND seq > ?", args).rowcount
            dropped = thread.compacted_through > after_seq
            db.execute(
                "UPDATE threads SET message_count = message_count - ?, update_time = ?, "
                f"compacted_through = CASE WHEN ? THEN 0 ELSE compacted_through END, "
                f"summary = CASE WHEN ? THEN NULL ELSE summary END WHERE {_WHERE}",
                (count, clock_us(), int(dropped), int(dropped), key.workspace_id, key.thread_id),
            )
            if repair is not None:
                mark(db, [Repair("t", key.workspace_id, key.thread_id)], repair)
            removed = [message_of(r) for r in reversed(newest)]
            return TruncateResult(_existing(db, key), removed, count, [r[0] for r in ids])

        return await self._db.call(self._db.tx, run)

    async def compact_thread(
        self, key: ThreadKey, through_seq: int, summary: bytes, request_id: str, *, repair: Fence | None = None
    ) -> CompactResult:
        """Keep the summary on the thread row; the messages stay (ListMessages marks them compacted)."""

        def run(db: sqlite3.Connection) -> CompactResult:
            thread = _existing(db, key)
            done = db.execute(
                f"SELECT compact_request_id FROM threads WHERE {_WHERE}", (key.workspace_id, key.thread_id)
            ).fetchone()[0]
            if request_id and done == request_id:
                return CompactResult(thread, True)
            check_compaction(thread, through_seq)
            db.execute(
                "UPDATE threads SET compacted_through = ?, summary = ?, compact_request_id = ?, update_time = ? "
                f"WHERE {_WHERE}",
                (through_seq, summary, request_id, clock_us(), key.workspace_id, key.thread_id),
            )
            if repair is not None:
                mark(db, [Repair("t", key.workspace_id, key.thread_id)], repair)
            return CompactResult(_existing(db, key), False)

        return await self._db.call(self._db.tx, run)
