"""Preferences on PostgreSQL: one version row per user, bumped under its lock by every write."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from server.storage.models import (
    Fence,
    PreferenceChange,
    PreferenceSet,
    PreferenceValue,
    Repair,
)
from server.storage.sql.postgres.db import (
    TS,
    US,
    PgDatabase,
)
from server.storage.sql.postgres.repairs import mark

log = logging.getLogger(__name__)


class PostgresPreferences:
    """PreferenceStore on PostgreSQL.

    Args:
        db: the shared pool.
    """

    def __init__(self, db: PgDatabase) -> None:
        self._db = db

    async def get_preferences(self, workspace_id: str, user_id: str) -> PreferenceSet:
        """Return a user's preferences and their version, in one snapshot."""
        rows = await self._db.guard(
            self._db.pool.fetch(
                f"SELECT s.version, p.key, p.value, {US.format(col='p.update_time')} AS us "
                "FROM preference_sets s LEFT JOIN preferences p "
                "ON p.workspace_id = s.workspace_id AND p.user_id = s.user_id "
                "WHERE s.workspace_id = $1 AND s.user_id = $2",
                workspace_id,
                user_id,
            )
        )
        if not rows:
            return PreferenceSet(0, {})
        values = {r["key"]: PreferenceValue(r["value"], r["us"]) for r in rows if r["key"] is not None}
        return PreferenceSet(rows[0]["version"], values)

    async def _bump(self, conn: Any, workspace_id: str, user_id: str) -> int:
        # The upsert takes the row lock, so preference writes of one user are serialised.
        version: int = await conn.fetchval(
            "INSERT INTO preference_sets (workspace_id, user_id, version) VALUES ($1, $2, 1) "
            "ON CONFLICT (workspace_id, user_id) DO UPDATE SET version = preference_sets.version + 1 "
            "RETURNING version",
            workspace_id,
            user_id,
        )
        return version

    async def set_preferences(
        self, workspace_id: str, user_id: str, values: dict[str, str], *, repair: Fence | None = None
    ) -> PreferenceChange:
        """Upsert keys and bump the version."""
        now_us = time.time_ns() // 1000

        async def run() -> PreferenceChange:
            async with self._db.pool.acquire() as conn, conn.transaction():
                version = await self._bump(conn, workspace_id, user_id)
                await conn.execute(
                    "INSERT INTO preferences (workspace_id, user_id, key, value, update_time) "
                    f"SELECT $1, $2, k, v, {TS.format(arg='$5::bigint')} "
                    "FROM unnest($3::text[], $4::text[]) AS u(k, v) "
                    "ON CONFLICT (workspace_id, user_id, key) DO UPDATE "
                    "SET value = excluded.value, update_time = excluded.update_time",
                    workspace_id,
                    user_id,
                    list(values),
                    list(values.values()),
                    now_us,
                )
                if repair is not None:
                    await mark(conn, [Repair("u", workspace_id, user_id)], repair)
            set_values = {k: PreferenceValue(v, now_us) for k, v in values.items()}
            return PreferenceChange(version, set_values, (), False, len(values))

        return await self._db.guard(run())  # type: ignore[no-any-return]

    async def delete_preferences(
        self, workspace_id: str, user_id: str, keys: Sequence[str] | None, *, repair: Fence | None = None
    ) -> PreferenceChange:
        """Delete some keys (None: all) and bump the version."""

        async def run() -> PreferenceChange:
            async with self._db.pool.acquire() as conn, conn.transaction():
                version = await self._bump(conn, workspace_id, user_id)
                if keys is None:
                    status = await conn.execute(
                        "DELETE FROM preferences WHERE workspace_id = $1 AND user_id = $2", workspace_id, user_id
                    )
                else:
                    status = await conn.execute(
                        "DELETE FROM preferences WHERE workspace_id = $1 AND user_id = $2 AND key = ANY($3::text[])",
                        workspace_id,
                        user_id,
                        list(keys),
                    )
                if repair is not None:
                    await mark(conn, [Repair("u", workspace_id, user_id)], repair)
            return PreferenceChange(version, {}, tuple(keys or ()), keys is None, int(status.split()[-1]))

        return await self._db.guard(run())  # type: ignore[no-any-return]
