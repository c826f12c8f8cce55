"""Preferences on SQLite: one version row per user, bumped by every write."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from server.storage.models import (
    Fence,
    PreferenceChange,
    PreferenceSet,
    PreferenceValue,
    Repair,
)
from server.storage.sql.sqlite.db import (
    SqliteDatabase,
    clock_us,
)
from server.storage.sql.sqlite.repairs import mark


class SqlitePreferences:
    """PreferenceStore on SQLite.

    Args:
        db: the shared connection.
    """

    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

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

        return await self._db.call(self._db.tx, run)

    @staticmethod
    def _bump(db: sqlite3.Connection, workspace_id: str, user_id: str) -> int:
        row = db.execute(
            "INSERT INTO preference_sets VALUES (?, ?, 1) ON CONFLICT (workspace_id, user_id) "
            "DO UPDATE SET version = version + 1 RETURNING version",
            (workspace_id, user_id),
        ).fetchone()
        return int(row[0])

    async def set_preferences(
        self, workspace_id: str, user_id: str, values: dict[str, str], *, repair: Fence | None = None
    ) -> PreferenceChange:
        """Upsert keys and bump the version."""
        now_us = clock_us()

        def run(db: sqlite3.Connection) -> PreferenceChange:
            version = self._bump(db, workspace_id, user_id)
            db.executemany(
                "INSERT INTO preferences VALUES (?, ?, ?, ?, ?) ON CONFLICT (workspace_id, user_id, key) "
                "DO UPDATE SET value = excluded.value, update_time = excluded.update_time",
                [(workspace_id, user_id, k, v, now_us) for k, v in values.items()],
            )
            if repair is not None:
                mark(db, [Repair("u", workspace_id, user_id)], repair)
            set_values = {k: PreferenceValue(v, now_us) for k, v in values.items()}
            return PreferenceChange(version, set_values, (), False, len(values))

        return await self._db.call(self._db.tx, run)

    async def delete_preferences(
        self, workspace_id: str, user_id: str, keys: Sequence[str] | None, *, repair: Fence | None = None
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
            if repair is not None:
                mark(db, [Repair("u", workspace_id, user_id)], repair)
            return PreferenceChange(version, {}, tuple(keys or ()), keys is None, count)

        return await self._db.call(self._db.tx, run)
