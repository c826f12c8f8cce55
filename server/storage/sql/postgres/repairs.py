"""The cache repair log on PostgreSQL: threads and users whose cached copy a write around Redis made stale."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from server.storage.models import Fence, Repair, ThreadKey
from server.storage.protocols import CacheFencedError
from server.storage.sql.postgres.db import TS, US, PgDatabase


async def marked(conn: Any, kind: str, keys: Sequence[ThreadKey]) -> set[ThreadKey]:
    """Return which of the threads are already marked with ``kind``, inside the caller's transaction."""
    rows = await conn.fetch(
        "SELECT r.workspace_id, r.object_id FROM cache_repairs r "
        "JOIN unnest($2::text[], $3::text[]) AS k(ws, id) ON r.workspace_id = k.ws AND r.object_id = k.id "
        "WHERE r.kind = $1",
        kind,
        [k.workspace_id for k in keys],
        [k.thread_id for k in keys],
    )
    return {ThreadKey(r["workspace_id"], r["object_id"]) for r in rows}


async def mark(conn: Any, repairs: Sequence[Repair], fence: Fence | None = None) -> None:
    """Mark entries for repair inside the caller's transaction (a write around Redis marks what it wrote).

    With ``fence``, the buckets' epochs are checked first under a shared lock (a recovery bumping them
    waits for this transaction, and this one for a recovery): CacheFencedError if one moved on.
    """
    if fence is not None:
        buckets = sorted({r.bucket for r in repairs})
        rows = await conn.fetch(
            "SELECT bucket, epoch FROM cache_epochs WHERE bucket = ANY($1::int[]) ORDER BY bucket FOR SHARE", buckets
        )
        moved = [r["bucket"] for r in rows if fence.get(r["bucket"]) != r["epoch"]]
        if moved:
            raise CacheFencedError(moved)
    await conn.execute(
        "INSERT INTO cache_repairs (kind, workspace_id, object_id, bucket) "
        "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int[]) "
        "ON CONFLICT (kind, workspace_id, object_id) DO UPDATE SET create_time = clock_timestamp(), "
        "bucket = excluded.bucket",
        [r.kind for r in repairs],
        [r.workspace_id for r in repairs],
        [r.object_id for r in repairs],
        [r.bucket for r in repairs],
    )


class PostgresRepairLog:
    """RepairLog on PostgreSQL.

    Args:
        db: the shared pool.
    """

    def __init__(self, db: PgDatabase) -> None:
        self._db = db

    async def mark_repairs(self, repairs: Sequence[Repair]) -> None:
        """Mark cache entries as possibly stale."""

        async def run() -> None:
            async with self._db.pool.acquire() as conn:
                await mark(conn, repairs)

        await self._db.guard(run())

    async def list_repairs(self, limit: int, buckets: Sequence[int] | None = None) -> list[Repair]:
        """Return cache entries marked as possibly stale in the buckets (None: all), oldest first."""
        rows = await self._db.guard(
            self._db.pool.fetch(
                f"SELECT kind, workspace_id, object_id, {US.format(col='create_time')} AS us "
                "FROM cache_repairs WHERE $2::int[] IS NULL OR bucket = ANY($2::int[]) "
                "ORDER BY create_time LIMIT $1",
                limit,
                None if buckets is None else list(buckets),
            )
        )
        return [Repair(r["kind"], r["workspace_id"], r["object_id"], r["us"]) for r in rows]

    async def clear_repairs(self, repairs: Sequence[Repair]) -> None:
        """Forget repairs applied to the cache, unless marked again since they were listed."""
        await self._db.guard(
            self._db.pool.execute(
                "DELETE FROM cache_repairs r "
                "USING unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) AS k(kind, ws, id, us) "
                "WHERE r.kind = k.kind AND r.workspace_id = k.ws AND r.object_id = k.id "
                f"AND r.create_time <= {TS.format(arg='k.us')}",
                [r.kind for r in repairs],
                [r.workspace_id for r in repairs],
                [r.object_id for r in repairs],
                [r.marked_us for r in repairs],
            )
        )

    async def epochs(self, buckets: Sequence[int] | None = None) -> Fence:
        """Return the repair epoch of each bucket (None: all)."""
        rows = await self._db.guard(
            self._db.pool.fetch(
                "SELECT bucket, epoch FROM cache_epochs WHERE $1::int[] IS NULL OR bucket = ANY($1::int[])",
                None if buckets is None else list(buckets),
            )
        )
        return {r["bucket"]: r["epoch"] for r in rows}

    async def begin_recovery(self, buckets: Sequence[int] | None = None) -> Fence:
        """Bump the buckets' epochs (None: all), fencing out writes around Redis made under the old ones."""
        rows = await self._db.guard(
            self._db.pool.fetch(
                # Rows locked in bucket order, as writes around Redis lock them (FOR SHARE), so the two
                # never deadlock.
                "UPDATE cache_epochs e SET epoch = e.epoch + 1 FROM (SELECT bucket FROM cache_epochs "
                "WHERE $1::int[] IS NULL OR bucket = ANY($1::int[]) ORDER BY bucket FOR UPDATE) l "
                "WHERE e.bucket = l.bucket RETURNING e.bucket, e.epoch",
                None if buckets is None else list(buckets),
            )
        )
        return {r["bucket"]: r["epoch"] for r in rows}

    async def backfill_buckets(self) -> None:
        """Give repairs recorded before migration 0006 their bucket (computed here: SQL has no crc32)."""
        rows = await self._db.guard(
            self._db.pool.fetch("SELECT kind, workspace_id, object_id FROM cache_repairs WHERE bucket < 0")
        )
        if rows:
            repairs = [Repair(r["kind"], r["workspace_id"], r["object_id"]) for r in rows]
            await self._db.guard(
                self._db.pool.executemany(
                    "UPDATE cache_repairs SET bucket = $4 WHERE kind = $1 AND workspace_id = $2 AND object_id = $3",
                    [(r.kind, r.workspace_id, r.object_id, r.bucket) for r in repairs],
                )
            )
