"""KeyStore on SQLite: API keys, stored as hashes, run on the store's single worker thread."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from typing import Any, TypeVar

from server.storage.apikeys import ApiKeyRecord
from server.storage.sql.sqlite.db import SqliteDatabase

T = TypeVar("T")

_COLS = "key_id, workspace_id, role, name, secret_hash, create_time, revoke_time"


def _record(row: Sequence[Any]) -> ApiKeyRecord:
    return ApiKeyRecord(row[0], row[1], row[2], row[3], bytes(row[4]), row[5], row[6])


class SqliteApiKeys:
    """KeyStore on SQLite.

    Args:
        db: the shared connection.
    """

    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    async def create_api_key(self, record: ApiKeyRecord) -> ApiKeyRecord:
        """Insert a new key; return it with its create time."""
        now_us = time.time_ns() // 1000

        def run(db: sqlite3.Connection) -> None:
            db.execute(
                f"INSERT INTO api_keys ({_COLS}) VALUES (?, ?, ?, ?, ?, ?, NULL)",
                (record.key_id, record.workspace_id, record.role, record.name, record.secret_hash, now_us),
            )

        await self._db.call(self._db.tx, run)
        return ApiKeyRecord(record.key_id, record.workspace_id, record.role, record.name, record.secret_hash, now_us)

    async def get_api_key(self, key_id: str) -> ApiKeyRecord | None:
        """Return the key with this id, or None."""

        def run() -> ApiKeyRecord | None:
            row = self._db.connection().execute(f"SELECT {_COLS} FROM api_keys WHERE key_id = ?", (key_id,)).fetchone()
            return _record(row) if row else None

        return await self._db.call(run)

    async def list_api_keys(self, workspace_id: str | None) -> Sequence[ApiKeyRecord]:
        """Return the keys of one workspace (None: all), oldest first."""

        def run() -> list[ApiKeyRecord]:
            if workspace_id is None:
                rows = self._db.connection().execute(f"SELECT {_COLS} FROM api_keys ORDER BY create_time, key_id")
            else:
                rows = self._db.connection().execute(
                    f"SELECT {_COLS} FROM api_keys WHERE workspace_id = ? ORDER BY create_time, key_id",
                    (workspace_id,),
                )
            return [_record(r) for r in rows]

        return await self._db.call(run)

    async def revoke_api_key(self, key_id: str) -> bool:
        """Revoke a live key; False when there is none with this id."""
        now_us = time.time_ns() // 1000

        def run(db: sqlite3.Connection) -> bool:
            cur = db.execute(
                "UPDATE api_keys SET revoke_time = ? WHERE key_id = ? AND revoke_time IS NULL", (now_us, key_id)
            )
            return cur.rowcount > 0

        return await self._db.call(self._db.tx, run)
