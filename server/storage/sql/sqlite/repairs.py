"""The cache repair log on SQLite: threads and users whose cached copy a write around Redis made stale."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from server.storage.models import Fence, Repair
from server.storage.protocols import CacheFencedError
from server.storage.sql.sqlite.db import SqliteDatabase, clock_us


def is_marked(db: sqlite3.Connection, kind: str, workspace_id: str, object_id: str) -> bool:
    """Tell whether an entry is marked, inside the caller's transaction."""
    row = db.execute(
        "SELECT 1 FROM cache_repairs WHERE kind = ? AND workspace_id = ? AND object_id = ?",
        (kind, workspace_id, object_id),
    ).fetchone()
    return row is not None


def _in(buckets: Sequence[int] | None) -> tuple[str, tuple[int, ...]]:
    if buckets is None:
        return "1", ()
    return f"bucket IN ({', '.join('?' * len(buckets))})", tuple(buckets)


def mark(db: sqlite3.Connection, repairs: Sequence[Repair], fence: Fence | None = None) -> None:
    """Mark entries for repair inside the caller's transaction (a write around Redis marks what it wrote).

    With ``fence``, the buckets' epochs are checked first (the one writer serialises this with a
    recovery): CacheFencedError if one moved on.
    """
    if fence is not None:
        where, args = _in(sorted({r.bucket for r in repairs}))
        rows = db.execute(f"SELECT bucket, epoch FROM cache_epochs WHERE {where}", args).fetchall()
        moved = [b for b, epoch in rows if fence.get(b) != epoch]
        if moved:
            raise CacheFencedError(moved)
    now = clock_us()
    db.executemany(
        "INSERT INTO cache_repairs (kind, workspace_id, object_id, create_time, bucket) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (kind, workspace_id, object_id) DO UPDATE SET create_time = excluded.create_time, "
        "bucket = excluded.bucket",
        [(r.kind, r.workspace_id, r.object_id, now, r.bucket) for r in repairs],
    )


class SqliteRepairLog:
    """RepairLog on SQLite.

    Args:
        db: the shared connection.
    """

    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    async def mark_repairs(self, repairs: Sequence[Repair]) -> None:
        """Mark cache entries as possibly stale."""
        await self._db.call(self._db.tx, lambda db: mark(db, repairs))

    async def list_repairs(self, limit: int, buckets: Sequence[int] | None = None) -> list[Repair]:
        """Return cache entries marked as possibly stale in the buckets (None: all), oldest first."""
        where, args = _in(buckets)

        def run() -> list[Repair]:
            rows = self._db.connection().execute(
                "SELECT kind, workspace_id, object_id, create_time FROM cache_repairs "
                f"WHERE {where} ORDER BY create_time LIMIT ?",
                (*args, limit),
            )
            return [Repair(*r) for r in rows]

        return await self._db.call(run)

    async def clear_repairs(self, repairs: Sequence[Repair]) -> None:
        """Forget repairs applied to the cache, unless marked again since they were listed."""

        def run(db: sqlite3.Connection) -> None:
            db.executemany(
                "DELETE FROM cache_repairs WHERE kind = ? AND workspace_id = ? AND object_id = ? AND create_time <= ?",
                [(r.kind, r.workspace_id, r.object_id, r.marked_us) for r in repairs],
            )

        await self._db.call(self._db.tx, run)

    async def epochs(self, buckets: Sequence[int] | None = None) -> Fence:
        """Return the repair epoch of each bucket (None: all)."""
        where, args = _in(buckets)

        def run() -> Fence:
            rows = self._db.connection().execute(f"SELECT bucket, epoch FROM cache_epochs WHERE {where}", args)
            return dict(rows.fetchall())

        return await self._db.call(run)

    async def begin_recovery(self, buckets: Sequence[int] | None = None) -> Fence:
        """Bump the buckets' epochs (None: all), fencing out writes around Redis made under the old ones."""
        where, args = _in(buckets)

        def run(db: sqlite3.Connection) -> Fence:
            rows = db.execute(f"UPDATE cache_epochs SET epoch = epoch + 1 WHERE {where} RETURNING bucket, epoch", args)
            return dict(rows.fetchall())

        return await self._db.call(self._db.tx, run)

    async def backfill_buckets(self) -> None:
        """Give repairs recorded before migration 0006 their bucket (computed here: SQL has no crc32)."""

        def run(db: sqlite3.Connection) -> None:
            rows = db.execute("SELECT kind, workspace_id, object_id FROM cache_repairs WHERE bucket < 0").fetchall()
            db.executemany(
                "UPDATE cache_repairs SET bucket = ? WHERE kind = ? AND workspace_id = ? AND object_id = ?",
                [(Repair(*r).bucket, *r) for r in rows],
            )

        await self._db.call(self._db.tx, run)
