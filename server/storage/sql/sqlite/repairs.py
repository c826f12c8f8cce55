"""The cache repair log on SQLite: threads and users whose cached copy a write around Redis made stale."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from server.storage.models import Repair
from server.storage.sql.sqlite.db import SqliteDatabase, clock_us


def is_marked(db: sqlite3.Connection, kind: str, workspace_id: str, object_id: str) -> bool:
    """Tell whether an entry is marked, inside the caller's transaction."""
    row = db.execute(
        "SELECT 1 FROM cache_repairs WHERE kind = ? AND workspace_id = ? AND object_id = ?",
        (kind, workspace_id, object_id),
    ).fetchone()
    return row is not None


def mark(db: sqlite3.Connection, repairs: Sequence[Repair]) -> None:
    """Mark entries for repair inside the caller's transaction (a write around Redis marks what it wrote)."""
    now = clock_us()
    db.executemany(
        "INSERT INTO cache_repairs VALUES (?, ?, ?, ?) "
        "ON CONFLICT (kind, workspace_id, object_id) DO UPDATE SET create_time = excluded.create_time",
        [(r.kind, r.workspace_id, r.object_id, now) for r in repairs],
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

    async def list_repairs(self, limit: int) -> list[Repair]:
        """Return cache entries marked as possibly stale, oldest first."""

        def run() -> list[Repair]:
            rows = self._db.connection().execute(
                "SELECT kind, workspace_id, object_id, create_time FROM cache_repairs ORDER BY create_time LIMIT ?",
                (limit,),
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
