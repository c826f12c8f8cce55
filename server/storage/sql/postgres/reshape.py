"""Fork, truncate and compact on PostgreSQL, each in one transaction under the thread row's lock."""

from __future__ import annotations

from typing import Any

import asyncpg

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
from server.storage.sql.postgres.db import (
    INSERT_MESSAGES,
    MSG_COLS,
    THREAD_COLS,
    PgDatabase,
    message_columns,
    message_of,
    thread_of,
)
from server.storage.sql.postgres.repairs import mark
from server.storage.sql.rules import check_compaction, check_expected

_LOCK = f"SELECT {THREAD_COLS} FROM threads t WHERE t.workspace_id = $1 AND t.thread_id = $2 FOR UPDATE"


async def _locked(conn: Any, key: ThreadKey) -> ThreadInfo:
    row = await conn.fetchrow(_LOCK, key.workspace_id, key.thread_id)
    if row is None:
        raise ThreadNotFoundError(key.thread_id)
    return thread_of(row)


class PostgresReshape:
    """ReshapeStore on PostgreSQL.

    Args:
        db: the shared pool.
    """

    def __init__(self, db: PgDatabase) -> None:
        self._db = db

    async def fork_thread(
        self, source: ThreadKey, target: ThreadKey, through_seq: int | None, options: NewThreadOptions
    ) -> ForkResult:
        """Copy the source's messages up to through_seq into a new thread, renumbered from 1 (O(n) rows)."""

        async def run() -> ForkResult:
            async with self._db.pool.acquire() as conn, conn.transaction():
                # The source's lock orders the fork with appends and truncates of the source.
                parent = await _locked(conn, source)
                upto = parent.last_seq if through_seq is None else through_seq
                existing = await conn.fetchrow(
                    f"SELECT {THREAD_COLS} FROM threads t WHERE t.workspace_id = $1 AND t.thread_id = $2",
                    target.workspace_id,
                    target.thread_id,
                )
                if existing is not None:
                    found = thread_of(existing)
                    if found.parent_thread_id == source.thread_id and found.fork_seq == upto:
                        return ForkResult(found, found.message_count, True)
                    raise ThreadExistsError(target.thread_id)
                rows = await conn.fetch(
                    f"SELECT {MSG_COLS} FROM messages m WHERE m.workspace_id = $1 AND m.thread_id = $2 "
                    "AND m.seq <= $3 ORDER BY m.seq",
                    source.workspace_id,
                    source.thread_id,
                    upto,
                )
                copies = [
                    reseat(target.workspace_id, target.thread_id, i + 1, message_of(r)) for i, r in enumerate(rows)
                ]
                dead = await conn.fetchval(
                    "SELECT incarnation FROM thread_tombstones WHERE workspace_id = $1 AND thread_id = $2",
                    target.workspace_id,
                    target.thread_id,
                )
                row = await conn.fetchrow(
                    "INSERT INTO threads AS t (workspace_id, thread_id, user_id, title, ttl_seconds, pinned, last_seq, "
                    "message_count, parent_thread_id, fork_seq, incarnation) VALUES "
                    "($1, $2, $3, $4, $5, $6, $7, $7, $8, $9, "
                    "GREATEST(floor(extract(epoch FROM clock_timestamp()) * 1000000)::bigint, $10::bigint + 1)) "
                    f"RETURNING {THREAD_COLS}",
                    target.workspace_id,
                    target.thread_id,
                    options.user_id or parent.user_id,
                    options.title or parent.title,
                    parent.ttl_seconds,
                    parent.pinned,
                    len(copies),
                    source.thread_id,
                    upto,
                    dead or 0,
                )
                if copies:
                    await conn.execute(INSERT_MESSAGES, *message_columns([(target, m) for m in copies]))
                return ForkResult(thread_of(row), len(copies), False)

        try:
            return await self._db.guard(run())  # type: ignore[no-any-return]
        except asyncpg.exceptions.UniqueViolationError:
            # A concurrent fork or first append created the thread between our check and our insert.
            raise ThreadExistsError(target.thread_id) from None

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

        async def run() -> TruncateResult:
            async with self._db.pool.acquire() as conn, conn.transaction():
                thread = await _locked(conn, key)
                check_expected(thread, expected_last_seq)
                args = (key.workspace_id, key.thread_id, after_seq)
                where = "m.workspace_id = $1 AND m.thread_id = $2 AND m.seq > $3"
                newest = await conn.fetch(
                    f"SELECT {MSG_COLS} FROM messages m WHERE {where} ORDER BY m.seq DESC LIMIT $4", *args, keep
                )
                ids = await conn.fetch(
                    f"SELECT m.message_id FROM messages m WHERE {where} AND m.message_id IS NOT NULL", *args
                )
                status = await conn.execute(f"DELETE FROM messages m WHERE {where}", *args)
                count = int(status.split()[-1])
                row = await conn.fetchrow(
                    "UPDATE threads t SET message_count = t.message_count - $3, update_time = clock_timestamp(), "
                    "compacted_through = CASE WHEN t.compacted_through > $4 THEN 0 ELSE t.compacted_through END, "
                    "summary = CASE WHEN t.compacted_through > $4 THEN NULL ELSE t.summary END "
                    f"WHERE t.workspace_id = $1 AND t.thread_id = $2 RETURNING {THREAD_COLS}",
                    key.workspace_id,
                    key.thread_id,
                    count,
                    after_seq,
                )
                if repair is not None:
                    await mark(conn, [Repair("t", key.workspace_id, key.thread_id)], repair)
                removed = [message_of(r) for r in reversed(newest)]
                return TruncateResult(thread_of(row), removed, count, [r[0] for r in ids])

        return await self._db.guard(run())  # type: ignore[no-any-return]

    async def compact_thread(
        self, key: ThreadKey, through_seq: int, summary: bytes, request_id: str, *, repair: Fence | None = None
    ) -> CompactResult:
        """Keep the summary on the thread row; the messages stay (ListMessages marks them compacted)."""

        async def run() -> CompactResult:
            async with self._db.pool.acquire() as conn, conn.transaction():
                thread = await _locked(conn, key)
                done = await conn.fetchval(
                    "SELECT compact_request_id FROM threads WHERE workspace_id = $1 AND thread_id = $2",
                    key.workspace_id,
                    key.thread_id,
                )
                if request_id and done == request_id:
                    return CompactResult(thread, True)
                check_compaction(thread, through_seq)
                row = await conn.fetchrow(
                    "UPDATE threads t SET compacted_through = $3, summary = $4, compact_request_id = $5, "
                    "update_time = clock_timestamp() "
                    f"WHERE t.workspace_id = $1 AND t.thread_id = $2 RETURNING {THREAD_COLS}",
                    key.workspace_id,
                    key.thread_id,
                    through_seq,
                    summary,
                    request_id,
                )
                if repair is not None:
                    await mark(conn, [Repair("t", key.workspace_id, key.thread_id)], repair)
                return CompactResult(thread_of(row), False)

        return await self._db.guard(run())  # type: ignore[no-any-return]
