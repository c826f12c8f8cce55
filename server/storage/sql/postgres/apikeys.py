"""KeyStore on PostgreSQL: API keys, stored as hashes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from server.storage.apikeys import ApiKeyRecord
from server.storage.sql.postgres.db import US, PgDatabase

_COLS = (
    f"key_id, workspace_id, role, name, secret_hash, {US.format(col='create_time')} AS create_us, "
    f"{US.format(col='revoke_time')} AS revoke_us"
)


def _record(row: Any) -> ApiKeyRecord:
    return ApiKeyRecord(
        row["key_id"],
        row["workspace_id"],
        row["role"],
        row["name"],
        bytes(row["secret_hash"]),
        row["create_us"],
        row["revoke_us"],
    )


class PostgresApiKeys:
    """KeyStore on PostgreSQL.

    Args:
        db: the shared pool.
    """

    def __init__(self, db: PgDatabase) -> None:
        self._db = db

    async def create_api_key(self, record: ApiKeyRecord) -> ApiKeyRecord:
        """Insert a new key; return it with its create time."""
        row = await self._db.guard(
            self._db.pool.fetchrow(
                f"INSERT INTO api_keys (key_id, workspace_id, role, name, secret_hash) VALUES ($1, $2, $3, $4, $5) "
                f"RETURNING {_COLS}",
                record.key_id,
                record.workspace_id,
                record.role,
                record.name,
                record.secret_hash,
            )
        )
        return _record(row)

    async def get_api_key(self, key_id: str) -> ApiKeyRecord | None:
        """Return the key with this id, or None."""
        row = await self._db.guard(self._db.pool.fetchrow(f"SELECT {_COLS} FROM api_keys WHERE key_id = $1", key_id))
        return _record(row) if row else None

    async def list_api_keys(self, workspace_id: str | None) -> Sequence[ApiKeyRecord]:
        """Return the keys of one workspace (None: all), oldest first."""
        rows = await self._db.guard(
            self._db.pool.fetch(
                f"SELECT {_COLS} FROM api_keys WHERE $1::text IS NULL OR workspace_id = $1 "
                "ORDER BY create_time, key_id",
                workspace_id,
            )
        )
        return [_record(r) for r in rows]

    async def revoke_api_key(self, key_id: str) -> bool:
        """Revoke a live key; False when there is none with this id."""
        status = await self._db.guard(
            self._db.pool.execute(
                "UPDATE api_keys SET revoke_time = clock_timestamp() WHERE key_id = $1 AND revoke_time IS NULL",
                key_id,
            )
        )
        return str(status).split()[-1] != "0"
