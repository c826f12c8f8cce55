"""The SQLite connection: one connection driven from one worker thread, migrations, and shared SQL.

Each operation runs as one synchronous function on a single-thread executor, so every operation
is atomic with respect to the others and the event loop never blocks on disk.
"""

from __future__ import annotations

import asyncio
import functools
import json
import pathlib
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from server.storage.codec import encode_message
from server.storage.models import Role, StoredMessage, ThreadInfo, ThreadKey
from server.storage.protocols import StoreUnavailableError
from server.storage.sql import migrations

T = TypeVar("T")

THREAD_COLS = (
    "workspace_id, thread_id, user_id, title, ttl_seconds, pinned, message_count, last_seq, "
    "incarnation, create_time, update_time, parent_thread_id, fork_seq, compacted_through"
)
MSG_COLS = "seq, role, content, name, metadata, create_time, encoded"
INSERT_MESSAGE = (
    "INSERT INTO messages (workspace_id, thread_id, seq, role, content, name, metadata, create_time, encoded, "
    "message_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def thread_of(row: Sequence[Any]) -> ThreadInfo:
    """Return the ThreadInfo of a row selected with THREAD_COLS."""
    return ThreadInfo(
        row[0], row[1], row[2], row[3], row[4], bool(row[5]), row[6], row[7], row[8], row[9], row[10],
        row[11], row[12], row[13],
    )  # fmt: skip


def message_of(row: Sequence[Any]) -> StoredMessage:
    """Return the StoredMessage of a row selected with MSG_COLS."""
    return StoredMessage(
        row[0], Role(row[1]), row[2], row[3], json.loads(row[4]) if row[4] != "{}" else {}, row[5], row[6]
    )


def message_row(key: ThreadKey, m: StoredMessage) -> tuple[Any, ...]:
    """Return the arguments of INSERT_MESSAGE; the encoded column is encoded here, once."""
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
        m.message_id or None,
    )


def clock_us() -> int:
    """Return the wall clock in microseconds."""
    return time.time_ns() // 1000


class SqliteDatabase:
    """The one connection that every SQLite part shares, and its single worker thread.

    Args:
        path: the database file; created if missing.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chatmem-sqlite")
        self._conn: sqlite3.Connection | None = None
        self._last_incarnation = 0
        self._closed = False

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the worker thread; SQLite's operational errors mean unavailable."""
        if self._closed:
            raise StoreUnavailableError("the SQLite store is closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, functools.partial(fn, *args))
        except sqlite3.OperationalError as exc:
            raise StoreUnavailableError(f"SQLite: {exc}") from exc

    def connection(self) -> sqlite3.Connection:
        """Return the connection, opening it on first use (call on the worker thread only)."""
        if self._conn is None:
            if self._path != ":memory:":
                pathlib.Path(self._path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False, timeout=5.0)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")  # an acknowledged PERSISTED write survives power loss
            conn.execute("PRAGMA foreign_keys=ON")
            self._conn = conn
        return self._conn

    def tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in one IMMEDIATE transaction (call on the worker thread only)."""
        db = self.connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            out = fn(db)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return out

    def fresh_incarnation(self, db: sqlite3.Connection, key: ThreadKey, now: int) -> int:
        """Return a new incarnation for a thread (call on the worker thread only)."""
        # Strictly increasing within the process (the one process owns the file), and above any
        # deleted incarnation of the same thread.
        dead = db.execute(
            "SELECT incarnation FROM thread_tombstones WHERE workspace_id = ? AND thread_id = ?",
            (key.workspace_id, key.thread_id),
        ).fetchone()
        self._last_incarnation = max(now, self._last_incarnation + 1, (dead[0] + 1) if dead else 0)
        return self._last_incarnation

    async def close(self) -> None:
        """Close the connection and the worker thread (idempotent)."""
        if self._closed:
            return

        def shut() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await self.call(shut)
        self._closed = True
        self._executor.shutdown(wait=True)

    async def migrate(self) -> list[str]:
        """Apply pending migrations; return the names applied."""
        return await self.call(self._migrate)

    def _migrate(self) -> list[str]:
        db = self.connection()
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
                db.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)", (mig.version, mig.name, clock_us()))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            applied.append(f"{mig.version:04d}_{mig.name}")
        return applied
