"""The SQLite store (the embedded default): one connection, and a part per concern, each one narrow Protocol."""

from __future__ import annotations

from server.storage.sql.sqlite.apikeys import SqliteApiKeys
from server.storage.sql.sqlite.db import SqliteDatabase
from server.storage.sql.sqlite.messages import SqliteMessages
from server.storage.sql.sqlite.outbox import SqliteOutbox
from server.storage.sql.sqlite.preferences import SqlitePreferences
from server.storage.sql.sqlite.repairs import SqliteRepairLog
from server.storage.sql.sqlite.reshape import SqliteReshape
from server.storage.sql.sqlite.retention import SqliteRetention
from server.storage.sql.sqlite.threads import SqliteThreads


class SqliteStore:
    """The durable tier on an SQLite file (the Stores Protocol): its parts share one connection.

    Args:
        path: the database file; created if missing (":memory:" for a private in-memory database).
    """

    def __init__(self, path: str) -> None:
        self.db = SqliteDatabase(path)
        self.messages = SqliteMessages(self.db)
        self.threads = SqliteThreads(self.db)
        self.reshape = SqliteReshape(self.db)
        self.preferences = SqlitePreferences(self.db)
        self.repairs = SqliteRepairLog(self.db)
        self.outbox = SqliteOutbox(self.db)
        self.retention = SqliteRetention(self.db)
        self.keys = SqliteApiKeys(self.db)

    async def migrate(self) -> list[str]:
        """Apply pending migrations; return the names applied."""
        applied = await self.db.migrate()
        await self.repairs.backfill_buckets()
        return applied

    async def close(self) -> None:
        """Close the connection and the worker thread (idempotent)."""
        await self.db.close()
