"""The embedded durable store on SQLite: one connection, driven from one worker thread.

Each operation runs as one synchronous function on a single-thread executor, so every operation
is atomic with respect to the others and the event loop never blocks on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import pathlib
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from server.storage.codec import encode_message, encode_messages
from server.storage.models import (
    AppendCommand,
    AppendResult,
    EncodedPage,
    EncodedTail,
    NewThreadOptions,
    PreferenceChange,
    PreferenceSet,
    PreferenceValue,
    QueuedAppend,
    Repair,
    Role,
    Seed,
    StoredMessage,
    ThreadCursor,
    ThreadInfo,
    ThreadKey,
    ThreadPatch,
    ThreadTail,
    Trimmed,
)
from server.storage.protocols import StoreUnavailableError
from server.storage.sql import migrations
from server.storage.sql.planner import Replay, plan_appends
from server.storage.sql.sqlite.apikeys import SqliteApiKeys

T = TypeVar("T")

_THREAD_COLS = (
    "workspace_id, thread_id, user_id, title, ttl_seconds, pinned, message_count, last_seq, "
    "incarnation, create_time, update_time"
)
_MSG_COLS = "seq, role, content, name, metadata, create_time, encoded"
_INSERT_MESSAGE = (
    "INSERT INTO messages (workspace_id, thread_id, seq, role, content, name, metadata, create_time, encoded) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _thread(row: Sequence[Any]) -> ThreadInfo:
    return ThreadInfo(row[0], row[1], row[2], row[3], row[4], bool(row[5]), row[6], row[7], row[8], row[9], row[10])


def _message(row: Sequence[Any]) -> StoredMessage:
    return StoredMessage(
        row[0], Role(row[1]), row[2], row[3], json.loads(row[4]) if row[4] != "{}" else {}, row[5], row[6]
    )


def _message_row(key: ThreadKey, m: StoredMessage) -> tuple[Any, ...]:
    """Return the arguments of _INSERT_MESSAGE; the encoded column is encoded here, once."""
    return (
        key.workspace_id,
        key.thread_id,
        m.seq,
        int(m.role),
        m.content,
        m.name,
        json.dumps(m.metadata),
        m.create_time_us,
        encode_message(key.workspace_id, key.thread_id, m),
    )


def _now_us() -> int:
    return time.time_ns() // 1000


class SqliteStore(SqliteApiKeys):
    """Store Protocol on an SQLite file (the embedded default).

    Args:
        path: the database file; created if missing.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chatmem-sqlite")
        self._conn: sqlite3.Connection | None = None
        self._last_incarnation = 0
        self._closed = False
        self._sweeping = False

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise StoreUnavailableError("the SQLite store is closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, functools.partial(fn, *args))
        except sqlite3.OperationalError as exc:
            raise StoreUnavailableError(f"SQLite: {exc}") from exc

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            if self._path != ":memory:":
                pathlib.Path(self._path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False, timeout=5.0)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")  # an acknowledged PERSISTED write survives power loss
            conn.execute("PRAGMA foreign_keys=ON")
            self._conn = conn
        return self._conn

    async def close(self) -> None:
        """Close the connection and the worker thread (idempotent)."""
        if self._closed:
            return

        def shut() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await self._call(shut)
        self._closed = True
        self._executor.shutdown(wait=True)

    async def migrate(self) -> list[str]:
        """Apply pending migrations; return the names applied."""
        return await self._call(self._migrate)

    def _migrate(self) -> list[str]:
        db = self._db()
        db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
            "applied_at INTEGER NOT NULL)"
        )
        done = {r[0] for r in db.execute("SELECT version FROM schema_migrations")}
        applied = []
        for mig in migrations.load("sqlite"):
            if mig.version in done:
                continue
            db.execute("BEGIN IMMEDIATE")
            try:
                for statement in mig.sql.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)", (mig.version, mig.name, _now_us()))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            applied.append(f"{mig.version:04d}_{mig.name}")
        return applied

    def _tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            out = fn(db)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return out

    def _fresh_incarnation(self, db: sqlite3.Connection, key: ThreadKey, now_us: int) -> int:
        # Strictly increasing within the process (the one process owns the file), and above any
        # deleted incarnation of the same thread.
        dead = db.execute(
            "SELECT incarnation FROM thread_tombstones WHERE workspace_id = ? AND thread_id = ?",
            (key.workspace_id, key.thread_id),
        ).fetchone()
        self._last_incarnation = max(now_us, self._last_incarnation + 1, (dead[0] + 1) if dead else 0)
        return self._last_incarnation

    @staticmethod
    def _is_marked(db: sqlite3.Connection, kind: str, workspace_id: str, object_id: str) -> bool:
        row = db.execute(
            "SELECT 1 FROM cache_repairs WHERE kind = ? AND workspace_id = ? AND object_id = ?",
            (kind, workspace_id, object_id),
        ).fetchone()
        return row is not None

    @staticmethod
    def _mark(db: sqlite3.Connection, repairs: Sequence[Repair]) -> None:
        now = _now_us()
        db.executemany(
            "INSERT INTO cache_repairs VALUES (?, ?, ?, ?) "
            "ON CONFLICT (kind, workspace_id, object_id) DO UPDATE SET create_time = excluded.create_time",
            [(r.kind, r.workspace_id, r.object_id, now) for r in repairs],
        )

    async def mark_repairs(self, repairs: Sequence[Repair]) -> None:
        """Mark cache entries as possibly stale."""
        await self._call(self._tx, functools.partial(self._mark_tx, repairs))

    def _mark_tx(self, repairs: Sequence[Repair], db: sqlite3.Connection) -> None:
        self._mark(db, repairs)

    async def list_repairs(self, limit: int) -> list[Repair]:
        """Return cache entries marked as possibly stale, oldest first."""

        def run() -> list[Repair]:
            rows = self._db().execute(
                "SELECT kind, workspace_id, object_id, create_time FROM cache_repairs ORDER BY create_time LIMIT ?",
                (limit,),
            )
            return [Repair(*r) for r in rows]

        return await self._call(run)

    async def clear_repairs(self, repairs: Sequence[Repair]) -> None:
        """Forget repairs applied to the cache, unless marked again since they were listed."""

        def run(db: sqlite3.Connection) -> None:
            db.executemany(
                "DELETE FROM cache_repairs WHERE kind = ? AND workspace_id = ? AND object_id = ? AND create_time <= ?",
                [(r.kind, r.workspace_id, r.object_id, r.marked_us) for r in repairs],
            )

        await self._call(self._tx, run)

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
            now = _now_us()
            incarnation = self._fresh_incarnation(db, key, now)
            if create is not None:
                db.execute(
                    "INSERT INTO threads (workspace_id, thread_id, user_id, title, ttl_seconds, pinned, message_count, "
                    "last_seq, incarnation, create_time, update_time) VALUES (?, ?, ?, ?, ?, 0, 0, 0, ?, ?, ?)",
                    (*where, create.user_id, create.title, create.ttl_seconds, incarnation, now, now),
                )
            return Seed(False, 0, 0, incarnation, dead_incarnation=dead)

        return await self._call(self._tx, run)

    async def apply_queued(self, entries: Sequence[QueuedAppend]) -> int:
        """Write outbox entries idempotently; skip deleted incarnations. Returns the messages inserted."""
        return await self._call(self._tx, functools.partial(self._apply_queued, entries))

    def _apply_queued(self, entries: Sequence[QueuedAppend], db: sqlite3.Connection) -> int:
        inserted = 0
        for e in entries:
            where = (e.key.workspace_id, e.key.thread_id)
            dead = db.execute(
                "SELECT incarnation FROM thread_tombstones WHERE workspace_id = ? AND thread_id = ?", where
            ).fetchone()
            if dead is not None and e.incarnation <= dead[0]:
                continue
            if e.request_id:
                # The first copy of a request id to reach the store wins (see PostgresStore.apply_queued).
                known = db.execute(
                    "SELECT first_seq FROM append_requests WHERE workspace_id = ? AND thread_id = ? AND request_id = ?",
                    (*where, e.request_id),
                ).fetchone()
                if known is not None and known[0] != e.first_seq:
                    continue
            opts = e.new_thread or NewThreadOptions()
            created = e.messages[0].create_time_us if e.messages else _now_us()
            db.execute(
                "INSERT INTO threads (workspace_id, thread_id, user_id, title, ttl_seconds, pinned, message_count, "
                "last_seq, incarnation, create_time, update_time) VALUES (?, ?, ?, ?, ?, 0, 0, 0, ?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                (*where, opts.user_id, opts.title, opts.ttl_seconds, e.incarnation, created, created),
            )
            added = [
                m.seq
                for m in e.messages
                if db.execute(_INSERT_MESSAGE + " ON CONFLICT DO NOTHING", _message_row(e.key, m)).rowcount
            ]
            if e.request_id:
                db.execute(
                    "INSERT INTO append_requests VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (*where, e.request_id, e.first_seq, len(e.messages), e.message_count),
                )
            if added:
                db.execute(
                    "UPDATE threads SET last_seq = MAX(last_seq, ?), message_count = message_count + ?, "
                    "update_time = ? WHERE workspace_id = ? AND thread_id = ?",
                    (max(added), len(added), _now_us(), *where),
                )
                inserted += len(added)
        return inserted

    async def append_batch(
        self, commands: Sequence[AppendCommand], *, repair: bool = False, fallback_gap: int = 0
    ) -> list[AppendResult | Exception]:
        """Commit a group of appends in one transaction (see planner for the rules).

        With ``repair``, the threads are marked for cache repair in the same transaction, and a thread
        not yet marked skips ``fallback_gap`` seqs first.
        """
        return await self._call(self._tx, functools.partial(self._append_batch, commands, repair, fallback_gap))

    def _append_batch(
        self, commands: Sequence[AppendCommand], repair: bool, fallback_gap: int, db: sqlite3.Connection
    ) -> list[AppendResult | Exception]:
        now_us = _now_us()
        threads: dict[ThreadKey, ThreadInfo] = {}
        for cmd in commands:
            if cmd.key in threads:
                continue
            row = db.execute(
                f"SELECT {_THREAD_COLS} FROM threads WHERE workspace_id = ? AND thread_id = ?",
                (cmd.key.workspace_id, cmd.key.thread_id),
            ).fetchone()
            if row is None:
                opts = cmd.new_thread
                threads[cmd.key] = ThreadInfo(
                    cmd.key.workspace_id, cmd.key.thread_id, opts.user_id, opts.title, opts.ttl_seconds,
                    False, 0, 0, self._fresh_incarnation(db, cmd.key, now_us), now_us, now_us,
                )  # fmt: skip
            else:
                threads[cmd.key] = _thread(row)
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
        if repair:
            gaps = {k: fallback_gap for k in threads if not self._is_marked(db, "a", k.workspace_id, k.thread_id)}
        plan = plan_appends(commands, threads, replays, now_us, gaps)
        if repair:
            self._mark(db, [Repair("a", k.workspace_id, k.thread_id) for k in plan.touched])
        db.executemany(_INSERT_MESSAGE, [_message_row(k, m) for k, m in plan.message_rows])
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

    async def tail(self, key: ThreadKey, limit: int) -> ThreadTail | None:
        """Return the newest messages and the thread."""

        def run() -> ThreadTail | None:
            db = self._db()
            row = db.execute(
                f"SELECT {_THREAD_COLS} FROM threads WHERE workspace_id = ? AND thread_id = ?",
                (key.workspace_id, key.thread_id),
            ).fetchone()
            if row is None:
                return None
            rows = db.execute(
                f"SELECT {_MSG_COLS} FROM messages WHERE workspace_id = ? AND thread_id = ? ORDER BY seq DESC LIMIT ?",
                (key.workspace_id, key.thread_id, limit),
            ).fetchall()
            return ThreadTail(_thread(row), [_message(r) for r in reversed(rows)])

        return await self._call(run)

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
            rows = self._db().execute(
                f"SELECT {_MSG_COLS} FROM messages WHERE workspace_id = ? AND thread_id = ? AND {cond} LIMIT ?",
                (key.workspace_id, key.thread_id, start, limit),
            )
            return [_message(r) for r in rows]

        return await self._call(run)

    async def encoded_page(self, key: ThreadKey, start_seq: int, limit: int) -> EncodedPage:
        """Return up to ``limit`` messages from ``start_seq`` (inclusive, ascending) as stored bytes."""

        def run() -> EncodedPage:
            where = "WHERE workspace_id = ? AND thread_id = ? AND seq >= ? ORDER BY seq LIMIT ?"
            args = (key.workspace_id, key.thread_id, start_seq, limit)
            rows = self._db().execute(f"SELECT seq, encoded FROM messages {where}", args).fetchall()
            if not rows:
                return EncodedPage([], start_seq - 1)
            items = [r[1] for r in rows]
            if None in items:  # rows written before the encoded column existed: encode them here
                full = self._db().execute(f"SELECT {_MSG_COLS} FROM messages {where}", args).fetchall()
                items = encode_messages(key.workspace_id, key.thread_id, [_message(r) for r in full])
            return EncodedPage(items, rows[-1][0])

        return await self._call(run)

    async def get_thread(self, key: ThreadKey) -> ThreadInfo | None:
        """Return a thread's metadata, or None."""

        def run() -> ThreadInfo | None:
            row = (
                self._db()
                .execute(
                    f"SELECT {_THREAD_COLS} FROM threads WHERE workspace_id = ? AND thread_id = ?",
                    (key.workspace_id, key.thread_id),
                )
                .fetchone()
            )
            return _thread(row) if row else None

        return await self._call(run)

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
            rows = self._db().execute(
                f"SELECT {_THREAD_COLS} FROM threads WHERE workspace_id = ? AND user_id = ? {cond} "
                "ORDER BY create_time DESC, thread_id DESC LIMIT ?",
                (*args, limit),
            )
            return [_thread(r) for r in rows]

        return await self._call(run)

    async def update_thread(self, key: ThreadKey, patch: ThreadPatch, *, repair: bool = False) -> ThreadInfo | None:
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
                    _now_us(),
                    key.workspace_id,
                    key.thread_id,
                ),
            )
            row = db.execute(
                f"SELECT {_THREAD_COLS} FROM threads WHERE workspace_id = ? AND thread_id = ?",
                (key.workspace_id, key.thread_id),
            ).fetchone()
            if row is not None and repair:
                self._mark(db, [Repair("t", key.workspace_id, key.thread_id)])
            return _thread(row) if row else None

        return await self._call(self._tx, run)

    async def delete_thread(
        self, key: ThreadKey, *, tombstone_incarnation: int = 0, repair: bool = False, idle_before_us: int | None = None
    ) -> tuple[ThreadInfo | None, int]:
        """Delete a thread, its messages and request records, and leave a tombstone.

        With ``idle_before_us``, a thread changed since then is left alone and nothing is written.

        Returns:
            (the deleted row or None, messages deleted).
        """

        def run(db: sqlite3.Connection) -> tuple[ThreadInfo | None, int]:
            where = (key.workspace_id, key.thread_id)
            row = db.execute(
                f"SELECT {_THREAD_COLS} FROM threads WHERE workspace_id = ? AND thread_id = ?", where
            ).fetchone()
            thread = _thread(row) if row else None
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
                    (*where, incarnation, _now_us()),
                )
            if repair:
                self._mark(db, [Repair("t", key.workspace_id, key.thread_id)])
            return thread, count

        return await self._call(self._tx, run)

    async def idle_threads(self, cutoff_us: int, after: ThreadInfo | None, limit: int) -> list[ThreadInfo]:
        """Return threads last changed before ``cutoff_us``, oldest change first, after the cursor thread."""
        cond = ""
        args: list[Any] = [cutoff_us]
        if after is not None:
            cond = "AND (update_time, workspace_id, thread_id) > (?, ?, ?)"
            args += [after.update_time_us, after.workspace_id, after.thread_id]

        def run() -> list[ThreadInfo]:
            rows = self._db().execute(
                f"SELECT {_THREAD_COLS} FROM threads WHERE update_time < ? {cond} "
                "ORDER BY update_time, workspace_id, thread_id LIMIT ?",
                (*args, limit),
            )
            return [_thread(r) for r in rows]

        return await self._call(run)

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

        return await self._call(self._tx, run)

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

    async def get_preferences(self, workspace_id: str, user_id: str) -> PreferenceSet:
        """Return a user's preferences and their version."""

        def run(db: sqlite3.Connection) -> PreferenceSet:
            row = db.execute(
                "SELECT version FROM preference_sets WHERE workspace_id = ? AND user_id = ?", (workspace_id, user_id)
            ).fetchone()
            if row is None:
                return PreferenceSet(0, {})
            rows = db.execute(
                "SELECT key, value, update_time FROM preferences WHERE workspace_id = ? AND user_id = ?",
                (workspace_id, user_id),
            )
            return PreferenceSet(row[0], {k: PreferenceValue(v, us) for k, v, us in rows})

        return await self._call(self._tx, run)

    @staticmethod
    def _bump(db: sqlite3.Connection, workspace_id: str, user_id: str) -> int:
        row = db.execute(
            "INSERT INTO preference_sets VALUES (?, ?, 1) ON CONFLICT (workspace_id, user_id) "
            "DO UPDATE SET version = version + 1 RETURNING version",
            (workspace_id, user_id),
        ).fetchone()
        return int(row[0])

    async def set_preferences(
        self, workspace_id: str, user_id: str, values: dict[str, str], *, repair: bool = False
    ) -> PreferenceChange:
        """Upsert keys and bump the version."""
        now_us = _now_us()

        def run(db: sqlite3.Connection) -> PreferenceChange:
            version = self._bump(db, workspace_id, user_id)
            db.executemany(
                "INSERT INTO preferences VALUES (?, ?, ?, ?, ?) ON CONFLICT (workspace_id, user_id, key) "
                "DO UPDATE SET value = excluded.value, update_time = excluded.update_time",
                [(workspace_id, user_id, k, v, now_us) for k, v in values.items()],
            )
            if repair:
                self._mark(db, [Repair("u", workspace_id, user_id)])
            set_values = {k: PreferenceValue(v, now_us) for k, v in values.items()}
            return PreferenceChange(version, set_values, (), False, len(values))

        return await self._call(self._tx, run)

    async def delete_preferences(
        self, workspace_id: str, user_id: str, keys: Sequence[str] | None, *, repair: bool = False
    ) -> PreferenceChange:
        """Delete some keys (None: all) and bump the version."""

        def run(db: sqlite3.Connection) -> PreferenceChange:
            version = self._bump(db, workspace_id, user_id)
            if keys is None:
                count = db.execute(
                    "DELETE FROM preferences WHERE workspace_id = ? AND user_id = ?", (workspace_id, user_id)
                ).rowcount
            else:
                count = sum(
                    db.execute(
                        "DELETE FROM preferences WHERE workspace_id = ? AND user_id = ? AND key = ?",
                        (workspace_id, user_id, k),
                    ).rowcount
                    for k in keys
                )
            if repair:
                self._mark(db, [Repair("u", workspace_id, user_id)])
            return PreferenceChange(version, {}, tuple(keys or ()), keys is None, count)

        return await self._call(self._tx, run)
