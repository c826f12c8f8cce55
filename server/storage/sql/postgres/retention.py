"""Retention on PostgreSQL: idle threads, batched trims of old messages, and the sweep lease."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from server.storage.models import (
    ThreadInfo,
    ThreadKey,
    Trimmed,
)
from server.storage.sql.postgres.db import (
    LOCK_THREADS,
    RETENTION_LOCK,
    THREAD_COLS,
    TS,
    PgDatabase,
    is_unavailable,
    release_lock,
    take_lock,
    thread_of,
    unavailable,
)

log = logging.getLogger(__name__)


class PostgresRetention:
    """RetentionStore on PostgreSQL.

    Args:
        db: the shared pool.
    """

    def __init__(self, db: PgDatabase) -> None:
        self._db = db

    async def idle_threads(self, cutoff_us: int, after: ThreadInfo | None, limit: int) -> list[ThreadInfo]:
        """Return threads last changed before ``cutoff_us``, oldest change first, after the cursor thread."""
        args: list[Any] = [cutoff_us, limit]
        cond = ""
        if after is not None:
            cond = f"AND (t.update_time, t.workspace_id, t.thread_id) > ({TS.format(arg='$3::bigint')}, $4, $5)"
            args += [after.update_time_us, after.workspace_id, after.thread_id]
        rows = await self._db.guard(
            self._db.pool.fetch(
                f"SELECT {THREAD_COLS} FROM threads t WHERE t.update_time < {TS.format(arg='$1::bigint')} {cond} "
                "ORDER BY t.update_time, t.workspace_id, t.thread_id LIMIT $2",
                *args,
            )
        )
        return [thread_of(r) for r in rows]

    async def trim_messages(self, cutoff_us: int, limit: int) -> list[Trimmed]:
        """Delete up to ``limit`` messages created before ``cutoff_us``; lower their threads' counts.

        The threads are locked first, in key order as appends and deletes lock them, so the sweep never
        deadlocks with them; the messages are then deleted only if still there and still old, so a
        concurrent sweep never counts a message twice.
        """
        for attempt in range(3):
            try:
                return await self._db.guard(self._trim_messages(cutoff_us, limit))  # type: ignore[no-any-return]
            except asyncpg.exceptions.DeadlockDetectedError:
                if attempt == 2:
                    raise
                log.warning("a retention batch met a deadlock; retrying")
        raise AssertionError("unreachable")

    async def _trim_messages(self, cutoff_us: int, limit: int) -> list[Trimmed]:
        cutoff = TS.format(arg="$1::bigint")
        async with self._db.pool.acquire() as conn, conn.transaction():
            found = await conn.fetch(
                f"SELECT workspace_id, thread_id, seq FROM messages WHERE create_time < {cutoff} "
                "ORDER BY create_time LIMIT $2",
                cutoff_us,
                limit,
            )
            if not found:
                return []
            keys = sorted({(r["workspace_id"], r["thread_id"]) for r in found})
            await conn.execute(
                LOCK_THREADS,
                [k[0] for k in keys],
                [k[1] for k in keys],
            )
            gone = await conn.fetch(
                "WITH gone AS (DELETE FROM messages m "
                "USING unnest($2::text[], $3::text[], $4::bigint[]) AS d(ws, th, seq) "
                "WHERE m.workspace_id = d.ws AND m.thread_id = d.th AND m.seq = d.seq "
                f"AND m.create_time < {cutoff} RETURNING m.workspace_id, m.thread_id) "
                "SELECT workspace_id, thread_id, count(*) AS n FROM gone GROUP BY workspace_id, thread_id",
                cutoff_us,
                [r["workspace_id"] for r in found],
                [r["thread_id"] for r in found],
                [r["seq"] for r in found],
            )
            if not gone:
                return []
            counted = await conn.fetch(
                "UPDATE threads t SET message_count = GREATEST(t.message_count - u.n, 0) "
                "FROM unnest($1::text[], $2::text[], $3::bigint[]) AS u(ws, th, n) "
                "WHERE t.workspace_id = u.ws AND t.thread_id = u.th "
                "RETURNING t.workspace_id, t.thread_id, t.incarnation",
                [r["workspace_id"] for r in gone],
                [r["thread_id"] for r in gone],
                [r["n"] for r in gone],
            )
        incarnations = {(r["workspace_id"], r["thread_id"]): r["incarnation"] for r in counted}
        return [
            Trimmed(
                ThreadKey(r["workspace_id"], r["thread_id"]),
                incarnations.get((r["workspace_id"], r["thread_id"]), 0),
                r["n"],
            )
            for r in gone
        ]

    @contextlib.asynccontextmanager
    async def retention_lease(self) -> AsyncIterator[bool]:
        """Hold a session advisory lock for the sweep; yields False when another replica holds it.

        The lock lives on one pooled connection held for the sweep, so a replica that dies releases it.
        """
        try:
            conn = await self._db.pool.acquire()
        except Exception as exc:
            if is_unavailable(exc):
                raise unavailable(exc) from exc
            raise
        try:
            try:
                held = bool(await take_lock(conn, "SELECT pg_try_advisory_lock($1)", RETENTION_LOCK))
            except Exception as exc:
                if is_unavailable(exc):
                    raise unavailable(exc) from exc
                raise
            try:
                yield held
            finally:
                if held:
                    with contextlib.suppress(Exception):  # a dead connection has released it already
                        await release_lock(conn, "SELECT pg_advisory_unlock($1)", RETENTION_LOCK)
        finally:
            await self._db.pool.release(conn)
