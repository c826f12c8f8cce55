"""The write_behind flush on PostgreSQL: outbox entries written as plan_flush says, in one transaction."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from server.storage.models import (
    NewThreadOptions,
    QueuedAppend,
    ThreadKey,
)
from server.storage.sql.planner import count_inserted, first_entries, plan_flush
from server.storage.sql.postgres.db import (
    DELETE_EMPTY_THREADS,
    INSERT_MESSAGES,
    LOCK_THREADS,
    TS,
    PgDatabase,
    key_columns,
    message_columns,
)

log = logging.getLogger(__name__)


class PostgresOutbox:
    """OutboxSink on PostgreSQL.

    Args:
        db: the shared pool.
    """

    def __init__(self, db: PgDatabase) -> None:
        self._db = db

    async def apply_queued(self, entries: Sequence[QueuedAppend]) -> int:
        """Write outbox entries idempotently; skip deleted incarnations. Returns the messages inserted."""
        return await self._db.guard(self._apply_queued(entries))  # type: ignore[no-any-return]

    async def _apply_queued(self, entries: Sequence[QueuedAppend]) -> int:
        firsts = first_entries(entries)
        ws, th = key_columns([e.key for e in firsts])
        async with self._db.pool.acquire() as conn, conn.transaction():
            # Rows are created first so that they can be locked: a concurrent delete then finishes
            # before the tombstones are read, and one that starts later waits for this commit.
            opts = [e.new_thread or NewThreadOptions() for e in firsts]
            created = await conn.fetch(
                "INSERT INTO threads (workspace_id, thread_id, user_id, title, ttl_seconds, incarnation, "
                "create_time, update_time) "
                f"SELECT ws, th, u, ti, ttl, inc, {TS.format(arg='us')}, {TS.format(arg='us')} "
                "FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[], $6::bigint[], $7::bigint[]) "
                "AS r(ws, th, u, ti, ttl, inc, us) ON CONFLICT DO NOTHING RETURNING workspace_id, thread_id",
                ws,
                th,
                [o.user_id for o in opts],
                [o.title for o in opts],
                [o.ttl_seconds for o in opts],
                [e.incarnation for e in firsts],
                [e.messages[0].create_time_us if e.messages else 0 for e in firsts],
            )
            await conn.execute(LOCK_THREADS, ws, th)
            dead = {
                ThreadKey(r["workspace_id"], r["thread_id"]): r["incarnation"]
                for r in await conn.fetch(
                    "SELECT d.workspace_id, d.thread_id, d.incarnation FROM thread_tombstones d "
                    "JOIN unnest($1::text[], $2::text[]) AS k(ws, th) ON d.workspace_id = k.ws AND d.thread_id = k.th",
                    ws,
                    th,
                )
            }
            requested = [e for e in entries if e.request_id]
            known = (
                {
                    (ThreadKey(r["workspace_id"], r["thread_id"]), r["request_id"]): r["first_seq"]
                    for r in await conn.fetch(
                        "SELECT a.workspace_id, a.thread_id, a.request_id, a.first_seq FROM append_requests a "
                        "JOIN unnest($1::text[], $2::text[], $3::text[]) AS k(ws, th, rid) "
                        "ON a.workspace_id = k.ws AND a.thread_id = k.th AND a.request_id = k.rid",
                        [e.key.workspace_id for e in requested],
                        [e.key.thread_id for e in requested],
                        [e.request_id for e in requested],
                    )
                }
                if requested
                else {}
            )
            plan = plan_flush(entries, dead, known)
            inserted = []
            if plan.message_rows:
                inserted = await conn.fetch(
                    INSERT_MESSAGES + " ON CONFLICT DO NOTHING RETURNING workspace_id, thread_id, seq",
                    *message_columns(plan.message_rows),
                )
            if plan.request_rows:
                requests = plan.request_rows
                await conn.execute(
                    "INSERT INTO append_requests "
                    "(workspace_id, thread_id, request_id, first_seq, count, message_count) "
                    "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::int[], $6::bigint[]) "
                    "ON CONFLICT DO NOTHING",
                    [e.key.workspace_id for e in requests],
                    [e.key.thread_id for e in requests],
                    [e.request_id for e in requests],
                    [e.first_seq for e in requests],
                    [len(e.messages) for e in requests],
                    [e.message_count for e in requests],
                )
            added = count_inserted([(ThreadKey(r["workspace_id"], r["thread_id"]), r["seq"]) for r in inserted])
            if added:
                touched = sorted(added, key=lambda k: (k.workspace_id, k.thread_id))
                tws, tth = key_columns(touched)
                await conn.execute(
                    "UPDATE threads t SET last_seq = GREATEST(t.last_seq, u.top), "
                    "message_count = t.message_count + u.n, "
                    "update_time = clock_timestamp() "
                    "FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[]) AS u(ws, th, top, n) "
                    "WHERE t.workspace_id = u.ws AND t.thread_id = u.th",
                    tws,
                    tth,
                    [added[k][0] for k in touched],
                    [added[k][1] for k in touched],
                )
            # A row this batch created for a thread that turned out deleted holds nothing: remove it.
            if created:
                await conn.execute(
                    DELETE_EMPTY_THREADS,
                    [r["workspace_id"] for r in created],
                    [r["thread_id"] for r in created],
                )
        return len(inserted)
