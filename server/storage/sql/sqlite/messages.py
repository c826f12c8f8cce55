"""Messages on SQLite: group-committed appends, seeds, and keyset reads."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Sequence

from server.storage.codec import decode_message, encode_messages, frame_runs, mark_compacted
from server.storage.models import (
    AppendCommand,
    AppendResult,
    EncodedPage,
    EncodedTail,
    Fence,
    FramedPage,
    NewThreadOptions,
    Repair,
    Seed,
    StoredMessage,
    ThreadInfo,
    ThreadKey,
    ThreadTail,
)
from server.storage.sql.planner import Replay, compacted_copy, message_ids, plan_appends
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
from server.storage.sql.sqlite.repairs import is_marked, mark


class SqliteMessages:
    """MessageStore on SQLite.

    Args:
        db: the shared connection.
    """

    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    async def append_batch(
        self, commands: Sequence[AppendCommand], *, repair: Fence | None = None, fallback_gap: int = 0
    ) -> list[AppendResult | Exception]:
        """Commit a group of appends in one transaction (see planner for the rules).

        With ``repair``, the threads are marked for cache repair in the same transaction, and a thread
        not yet marked skips ``fallback_gap`` seqs first.
        """
        return await self._db.call(self._db.tx, functools.partial(self._append_batch, commands, repair, fallback_gap))

    def _append_batch(
        self, commands: Sequence[AppendCommand], repair: Fence | None, fallback_gap: int, db: sqlite3.Connection
    ) -> list[AppendResult | Exception]:
        now_us = clock_us()
        threads: dict[ThreadKey, ThreadInfo] = {}
        for cmd in commands:
            if cmd.key in threads:
                continue
            row = db.execute(
                f"SELECT {THREAD_COLS} FROM threads WHERE workspace_id = ? AND thread_id = ?",
                (cmd.key.workspace_id, cmd.key.thread_id),
            ).fetchone()
            if row is None:
                opts = cmd.new_thread
                threads[cmd.key] = ThreadInfo(
                    cmd.key.workspace_id, cmd.key.thread_id, opts.user_id, opts.title, opts.ttl_seconds,
                    False, 0, 0, self._db.fresh_incarnation(db, cmd.key, now_us), now_us, now_us,
                )  # fmt: skip
            else:
                threads[cmd.key] = thread_of(row)
        replays: dict[tuple[ThreadKey, str], Replay] = {}
        for cmd in commands:
            if cmd.request_id:
                r = db.execute(
                    "SELECT first_seq, count, message_count FROM append_requests "
                    "WHERE workspace_id = ? AND thread_id = ? AND request_id = ?",
                    (cmd.key.workspace_id, cmd.key.thread_id, cmd.request_id),
                ).fetchone()
                if r is not None:
                    replays[(cmd.key, cmd.request_id)] = Replay(r[0], r[1], r[2])
        gaps: dict[ThreadKey, int] = {}
        around = [k for k in threads if repair is not None and k.bucket in repair]
        gaps = {k: fallback_gap for k in around if not is_marked(db, "a", k.workspace_id, k.thread_id)}
        plan = plan_appends(commands, threads, replays, now_us, gaps, _taken_ids(db, message_ids(commands)))
        written = [Repair("a", k.workspace_id, k.thread_id) for k in plan.touched if k in around]
        if written:
            mark(db, written, repair)
        db.executemany(INSERT_MESSAGE, [message_row(k, m) for k, m in plan.message_rows])
        db.executemany(
            "INSERT INTO append_requests VALUES (?, ?, ?, ?, ?, ?)",
            [
                (k.workspace_id, k.thread_id, rid, r.first_seq, r.count, r.message_count)
                for k, rid, r in plan.request_rows
            ],
        )
        for key in plan.touched:
            t = plan.threads[key]
            db.execute(
                "INSERT INTO threads (workspace_id, thread_id, user_id, title, ttl_seconds, pinned, message_count, "
                "last_seq, incarnation, create_time, update_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (workspace_id, thread_id) DO UPDATE SET message_count = excluded.message_count, "
                "last_seq = excluded.last_seq, update_time = excluded.update_time",
                (
                    t.workspace_id, t.thread_id, t.user_id, t.title, t.ttl_seconds, int(t.pinned),
                    t.message_count, t.last_seq, t.incarnation, t.create_time_us, t.update_time_us,
                ),
            )  # fmt: skip
        return plan.results

    async def seed(self, key: ThreadKey, create: NewThreadOptions | None = None) -> Seed:
        """Return the thread's counters; for an unknown thread a fresh incarnation above any deleted one.

        With ``create``, an unknown thread's row is created (empty, with that incarnation) so that it is
        listed before its first messages are flushed.
        """

        def run(db: sqlite3.Connection) -> Seed:
            where = (key.workspace_id, key.thread_id)
            row = db.execute(
                "SELECT last_seq, message_count, incarnation, ttl_seconds, pinned FROM threads "
                "WHERE workspace_id = ? AND thread_id = ?",
                where,
            ).fetchone()
            dead_row = db.execute(
                "SELECT incarnation FROM thread_tombstones WHERE workspace_id = ? AND thread_id = ?", where
            ).fetchone()
            dead = dead_row[0] if dead_row else 0
            if row is not None:
                return Seed(True, row[0], row[1], row[2], row[3], bool(row[4]), dead)
            now = clock_us()
            incarnation = self._db.fresh_incarnation(db, key, now)
            if create is not None:
                db.execute(
                    "INSERT INTO threads (workspace_id, thread_id, user_id, title, ttl_seconds, pinned, message_count, "
                    "last_seq, incarnation, create_time, update_time) VALUES (?, ?, ?, ?, ?, 0, 0, 0, ?, ?, ?)",
                    (*where, create.user_id, create.title, create.ttl_seconds, incarnation, now, now),
                )
            return Seed(False, 0, 0, incarnation, dead_incarnation=dead)

        return await self._db.call(self._db.tx, run)

    async def tail(self, key: ThreadKey, limit: int) -> ThreadTail | None:
        """Return the newest messages and the thread."""

        def run() -> ThreadTail | None:
            db = self._db.connection()
            row = db.execute(
                f"SELECT {THREAD_COLS} FROM threads WHERE workspace_id = ? AND thread_id = ?",
                (key.workspace_id, key.thread_id),
            ).fetchone()
            if row is None:
                return None
            thread = thread_of(row)
            # A compacted thread's window: its summary, then the messages after it.
            rows = db.execute(
                f"SELECT {MSG_COLS} FROM messages WHERE workspace_id = ? AND thread_id = ? AND seq > ? "
                "ORDER BY seq DESC LIMIT ?",
                (key.workspace_id, key.thread_id, thread.compacted_through, limit),
            ).fetchall()
            messages = [message_of(r) for r in reversed(rows)]
            if thread.compacted_through and len(messages) < limit:
                summary = db.execute(
                    "SELECT summary FROM threads WHERE workspace_id = ? AND thread_id = ?",
                    (key.workspace_id, key.thread_id),
                ).fetchone()[0]
                if summary is not None:
                    messages.insert(0, decode_message(summary))
            return ThreadTail(thread, messages)

        return await self._db.call(run)

    async def taken_message_ids(self, key: ThreadKey, ids: Sequence[str]) -> set[str]:
        """Return which of ``ids`` the thread already holds."""
        found = await self._db.call(lambda: _taken_ids(self._db.connection(), [(key, i) for i in ids]))
        return {i for _, i in found}

    async def encoded_tail(self, key: ThreadKey, limit: int) -> EncodedTail | None:
        """Return the newest messages as stored bytes (encoding rows that have none) and the thread."""
        tail = await self.tail(key, limit)
        if tail is None:
            return None
        return EncodedTail(tail.thread, encode_messages(key.workspace_id, key.thread_id, tail.messages))

    async def list_messages(self, key: ThreadKey, start_seq: int, reverse: bool, limit: int) -> list[StoredMessage]:
        """Keyset page of messages from start_seq (inclusive)."""
        if reverse:
            cond, start = "seq <= ? ORDER BY seq DESC", start_seq or 2**63 - 1
        else:
            cond, start = "seq >= ? ORDER BY seq", start_seq

        def run() -> list[StoredMessage]:
            db = self._db.connection()
            rows = db.execute(
                f"SELECT {MSG_COLS} FROM messages WHERE workspace_id = ? AND thread_id = ? AND {cond} LIMIT ?",
                (key.workspace_id, key.thread_id, start, limit),
            ).fetchall()
            through = _compacted_through(db, key)
            return [compacted_copy(key, message_of(r), r[0] <= through) for r in rows]

        return await self._db.call(run)

    async def encoded_page(self, key: ThreadKey, start_seq: int, limit: int) -> EncodedPage:
        """Return up to ``limit`` messages from ``start_seq`` (inclusive, ascending) as stored bytes."""

        def run() -> EncodedPage:
            where = "WHERE workspace_id = ? AND thread_id = ? AND seq >= ? ORDER BY seq LIMIT ?"
            args = (key.workspace_id, key.thread_id, start_seq, limit)
            rows = self._db.connection().execute(f"SELECT seq, encoded FROM messages {where}", args).fetchall()
            if not rows:
                return EncodedPage([], start_seq - 1)
            items = [r[1] for r in rows]
            if None in items:  # rows written before the encoded column existed: encode them here
                full = self._db.connection().execute(f"SELECT {MSG_COLS} FROM messages {where}", args).fetchall()
                items = encode_messages(key.workspace_id, key.thread_id, [message_of(r) for r in full])
            through = _compacted_through(self._db.connection(), key)
            items = [mark_compacted(item) if r[0] <= through else item for r, item in zip(rows, items, strict=True)]
            return EncodedPage(items, rows[-1][0])

        return await self._db.call(run)

    async def framed_page(self, key: ThreadKey, start_seq: int, limit: int, max_bytes: int) -> FramedPage:
        """Return what encoded_page does, framed as repeated field 1 in runs of at most ``max_bytes``."""
        page = await self.encoded_page(key, start_seq, limit)
        return FramedPage(frame_runs(page.items, max_bytes), len(page.items), page.last_seq)


def _taken_ids(db: sqlite3.Connection, pairs: Sequence[tuple[ThreadKey, str]]) -> set[tuple[ThreadKey, str]]:
    """Return the (thread, message_id) pairs among ``pairs`` that the store already holds."""
    return {
        (key, mid)
        for key, mid in pairs
        if db.execute(
            "SELECT 1 FROM messages WHERE workspace_id = ? AND thread_id = ? AND message_id = ?",
            (key.workspace_id, key.thread_id, mid),
        ).fetchone()
    }


def _compacted_through(db: sqlite3.Connection, key: ThreadKey) -> int:
    row = db.execute(
        "SELECT compacted_through FROM threads WHERE workspace_id = ? AND thread_id = ?",
        (key.workspace_id, key.thread_id),
    ).fetchone()
    return int(row[0]) if row else 0
