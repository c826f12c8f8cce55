"""Thread rows on PostgreSQL: metadata, listing, patches and deletes with tombstones."""

from __future__ import annotations

import logging
from typing import Any

from server.storage.models import (
    Fence,
    Repair,
    ThreadCursor,
    ThreadInfo,
    ThreadKey,
    ThreadPatch,
)
from server.storage.sql.postgres.db import (
    THREAD_COLS,
    TS,
    PgDatabase,
    thread_of,
)
from server.storage.sql.postgres.repairs import mark

log = logging.getLogger(__name__)


class PostgresThreads:
    """ThreadStore on PostgreSQL.

    Args:
        db: the shared pool.
    """

    def __init__(self, db: PgDatabase) -> None:
        self._db = db

    async def get_thread(self, key: ThreadKey) -> ThreadInfo | None:
        """Return a thread's metadata, or None."""
        row = await self._db.guard(
            self._db.pool.fetchrow(
                f"SELECT {THREAD_COLS} FROM threads t WHERE t.workspace_id = $1 AND t.thread_id = $2",
                key.workspace_id,
                key.thread_id,
            )
        )
        return thread_of(row) if row else None

    async def list_threads(
        self, workspace_id: str, user_id: str, after: ThreadCursor | None, limit: int
    ) -> list[ThreadInfo]:
        """Keyset page of a user's threads, newest first."""
        args: list[Any] = [workspace_id, user_id, limit]
        cond = ""
        if after is not None:
            cond = f"AND (t.create_time, t.thread_id) < ({TS.format(arg='$4::bigint')}, $5)"
            args += [after.create_time_us, after.thread_id]
        rows = await self._db.guard(
            self._db.pool.fetch(
                f"SELECT {THREAD_COLS} FROM threads t WHERE t.workspace_id = $1 AND t.user_id = $2 {cond} "
                "ORDER BY t.create_time DESC, t.thread_id DESC LIMIT $3",
                *args,
            )
        )
        return [thread_of(r) for r in rows]

    async def update_thread(
        self, key: ThreadKey, patch: ThreadPatch, *, repair: Fence | None = None
    ) -> ThreadInfo | None:
        """Apply a patch; ttl_seconds 0 restores the default TTL."""

        async def run() -> ThreadInfo | None:
            async with self._db.pool.acquire() as conn, conn.transaction():
                row = await conn.fetchrow(
                    "UPDATE threads t SET title = COALESCE($3, t.title), "
                    "ttl_seconds = CASE WHEN $4::int IS NULL THEN t.ttl_seconds "
                    "WHEN $4::int = 0 THEN NULL ELSE $4::int END, "
                    "pinned = COALESCE($5, t.pinned), update_time = clock_timestamp() "
                    f"WHERE t.workspace_id = $1 AND t.thread_id = $2 RETURNING {THREAD_COLS}",
                    key.workspace_id,
                    key.thread_id,
                    patch.title,
                    patch.ttl_seconds,
                    patch.pinned,
                )
                if row is not None and repair is not None:
                    await mark(conn, [Repair("t", key.workspace_id, key.thread_id)], repair)
                return thread_of(row) if row else None

        return await self._db.guard(run())  # type: ignore[no-any-return]

    async def delete_thread(
        self,
        key: ThreadKey,
        *,
        tombstone_incarnation: int = 0,
        repair: Fence | None = None,
        idle_before_us: int | None = None,
    ) -> tuple[ThreadInfo | None, int]:
        """Delete a thread, its messages and request records, and leave a tombstone.

        The tombstone holds the largest incarnation deleted (the row's, or ``tombstone_incarnation``
        for a thread the outbox still holds), so that a late flush of it is skipped. With
        ``idle_before_us``, a thread changed since then is left alone and nothing is written.

        Returns:
            (the deleted row or None, messages deleted).
        """

        async def run() -> tuple[ThreadInfo | None, int]:
            async with self._db.pool.acquire() as conn, conn.transaction():
                # The DELETE waits for an append holding the row and then re-checks update_time, so a
                # thread written meanwhile is no longer idle and survives.
                row = await conn.fetchrow(
                    "DELETE FROM threads t WHERE t.workspace_id = $1 AND t.thread_id = $2 "
                    f"AND ($3::bigint IS NULL OR t.update_time < {TS.format(arg='$3::bigint')}) "
                    f"RETURNING {THREAD_COLS}",
                    key.workspace_id,
                    key.thread_id,
                    idle_before_us,
                )
                thread = thread_of(row) if row else None
                if thread is None and idle_before_us is not None:
                    return None, 0
                incarnation = max(tombstone_incarnation, thread.incarnation if thread else 0)
                count = 0
                if thread is not None:
                    status = await conn.execute(
                        "DELETE FROM messages WHERE workspace_id = $1 AND thread_id = $2",
                        key.workspace_id,
                        key.thread_id,
                    )
                    count = int(status.split()[-1])
                    await conn.execute(
                        "DELETE FROM append_requests WHERE workspace_id = $1 AND thread_id = $2",
                        key.workspace_id,
                        key.thread_id,
                    )
                if incarnation:
                    await conn.execute(
                        "INSERT INTO thread_tombstones (workspace_id, thread_id, incarnation) VALUES ($1, $2, $3) "
                        "ON CONFLICT (workspace_id, thread_id) DO UPDATE SET "
                        "incarnation = GREATEST(thread_tombstones.incarnation, excluded.incarnation), "
                        "delete_time = clock_timestamp()",
                        key.workspace_id,
                        key.thread_id,
                        incarnation,
                    )
                if repair is not None:
                    await mark(conn, [Repair("t", key.workspace_id, key.thread_id)], repair)
                return thread, count

        return await self._db.guard(run())  # type: ignore[no-any-return]
