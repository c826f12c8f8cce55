"""The PostgreSQL store: one pool, and a part per concern, each implementing one narrow Protocol."""

from __future__ import annotations

import asyncpg

from server.storage.sql.postgres.apikeys import PostgresApiKeys
from server.storage.sql.postgres.db import PgDatabase
from server.storage.sql.postgres.messages import PostgresMessages
from server.storage.sql.postgres.outbox import PostgresOutbox
from server.storage.sql.postgres.preferences import PostgresPreferences
from server.storage.sql.postgres.repairs import PostgresRepairLog
from server.storage.sql.postgres.reshape import PostgresReshape
from server.storage.sql.postgres.retention import PostgresRetention
from server.storage.sql.postgres.threads import PostgresThreads


class PostgresStore:
    """The durable tier on PostgreSQL (the Stores Protocol): its parts share one asyncpg pool.

    Args:
        db: the pool.
    """

    def __init__(self, db: PgDatabase) -> None:
        self.db = db
        self.messages = PostgresMessages(db)
        self.threads = PostgresThreads(db)
        self.reshape = PostgresReshape(db)
        self.preferences = PostgresPreferences(db)
        self.repairs = PostgresRepairLog(db)
        self.outbox = PostgresOutbox(db)
        self.retention = PostgresRetention(db)
        self.keys = PostgresApiKeys(db)

    @classmethod
    async def connect(
        cls, dsn: str, *, min_size: int, max_size: int, command_timeout_s: float, connect_timeout_s: float
    ) -> PostgresStore:
        """Open a pool; raises StoreUnavailableError if PostgreSQL cannot be reached."""
        db = await PgDatabase.connect(
            dsn,
            min_size=min_size,
            max_size=max_size,
            command_timeout_s=command_timeout_s,
            connect_timeout_s=connect_timeout_s,
        )
        return cls(db)

    @classmethod
    def over(cls, pool: asyncpg.Pool) -> PostgresStore:
        """Wrap a pool the caller opened."""
        return cls(PgDatabase(pool))

    async def migrate(self) -> list[str]:
        """Apply pending migrations; return the names applied."""
        applied = await self.db.migrate()
        await self.repairs.backfill_buckets()
        return applied

    async def close(self) -> None:
        """Close the pool, waiting for connections in use."""
        await self.db.close()

    def pool_stats(self) -> dict[str, int]:
        """Return the pool's ``size``, ``idle`` and ``max``."""
        return self.db.pool_stats()
