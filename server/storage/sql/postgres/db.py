"""The PostgreSQL connection: the asyncpg pool, error mapping, migrations, and the SQL shared by the parts."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Sequence
from typing import Any

import asyncpg

from server.storage.codec import encode_message
from server.storage.models import Role, StoredMessage, ThreadInfo, ThreadKey
from server.storage.protocols import StoreUnavailableError
from server.storage.sql import migrations

log = logging.getLogger(__name__)

MAX_SEQ = 2**63 - 1
US = "(extract(epoch FROM {col}) * 1000000)::bigint"
TS = "(timestamptz 'epoch' + {arg} * interval '1 microsecond')"
THREAD_COLS = (
    "t.workspace_id, t.thread_id, t.user_id, t.title, t.ttl_seconds, t.pinned, t.message_count, t.last_seq, "
    f"t.incarnation, {US.format(col='t.create_time')} AS create_us, {US.format(col='t.update_time')} AS update_us, "
    "t.parent_thread_id, t.fork_seq, t.compacted_through"
)
MSG_COLS = (
    f"m.seq, m.role, m.content, m.name, m.metadata::text AS metadata, {US.format(col='m.create_time')} AS msg_us, "
    "m.encoded"
)
INSERT_MESSAGES = (
    "INSERT INTO messages (workspace_id, thread_id, seq, role, content, name, metadata, create_time, encoded, "
    "message_id) "
    f"SELECT ws, th, seq, role, content, name, meta::jsonb, {TS.format(arg='us')}, enc, mid "
    "FROM unnest($1::text[], $2::text[], $3::bigint[], $4::smallint[], $5::text[], $6::text[], "
    "$7::text[], $8::bigint[], $9::bytea[], $10::text[]) AS r(ws, th, seq, role, content, name, meta, us, enc, mid)"
)
LOCK_THREADS = (
    "SELECT 1 FROM threads t JOIN unnest($1::text[], $2::text[]) AS k(ws, th) "
    "ON t.workspace_id = k.ws AND t.thread_id = k.th ORDER BY t.workspace_id, t.thread_id FOR UPDATE OF t"
)
DELETE_EMPTY_THREADS = (
    "DELETE FROM threads t USING unnest($1::text[], $2::text[]) AS k(ws, th) "
    "WHERE t.workspace_id = k.ws AND t.thread_id = k.th AND t.last_seq = 0"
)
_MIGRATION_LOCK = 0x636861746D656D  # "chatmem": one advisory lock id, so replicas migrate one at a time
RETENTION_LOCK = _MIGRATION_LOCK + 1  # held for a whole retention sweep, so one replica sweeps at a time

_CONNECTION_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.InternalClientError,  # raised on a connection that died mid-operation
)
# SQLSTATEs that mean "the database cannot serve right now", not "this request is wrong": 08 connection
# exception, 53 insufficient resources, 57P admin/crash shutdown, 57014 statement cancelled (timeout),
# 25006 read-only (a replica after failover), 55P03 lock not available.
_UNAVAILABLE_SQLSTATES = ("08", "53", "57P", "57014", "25006", "55P03")


def is_unavailable(exc: BaseException) -> bool:
    """Tell whether an exception from asyncpg means PostgreSQL is unreachable or going away."""
    if isinstance(exc, _CONNECTION_ERRORS):
        return True
    if isinstance(exc, asyncpg.exceptions.PostgresError):
        return str(getattr(exc, "sqlstate", "") or "").startswith(_UNAVAILABLE_SQLSTATES)
    return False


def unavailable(exc: BaseException) -> StoreUnavailableError:
    """Return the StoreUnavailableError that stands for an asyncpg failure."""
    return StoreUnavailableError(f"PostgreSQL: {type(exc).__name__}: {exc}")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Reset nothing on release beyond asyncpg's own rollback of an open transaction (the pool's reset).

    asyncpg's default reset runs ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`` on
    every release: one more round trip to PostgreSQL, on the reply path of every store read. The
    server sets no session state (no SET, LISTEN or cursor outside a transaction); the two session
    advisory locks (migrations, retention) are unlocked by their holders, which close the connection
    when the unlock fails (see ``release_lock``).
    """


def release_lock(conn: Any, sql: str, *args: Any) -> Awaitable[None]:
    """Run ``sql`` (a session advisory unlock) on ``conn``; if it fails, close the connection, which releases it.

    The pool no longer resets a released connection (``_keep_session``), so a lock whose unlock did not
    run must not go back to the pool still held.
    """

    async def run() -> None:
        try:
            await conn.execute(sql, *args)
        except BaseException:
            conn.terminate()
            raise

    return run()


async def take_lock(conn: Any, sql: str, *args: Any) -> Any:
    """Run ``sql`` (a session advisory lock) on ``conn`` and return its value; if it fails, close the connection.

    A lock granted by PostgreSQL whose reply the client lost (a timeout cancels the call after the grant)
    would otherwise go back to the pool still held, as an unlock that did not run would (``release_lock``).
    """
    try:
        return await conn.fetchval(sql, *args)
    except BaseException:
        conn.terminate()
        raise


def _consume(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.debug("a cancelled store call ended with %r", task.exception())


def thread_of(row: Any) -> ThreadInfo:
    """Return the ThreadInfo of a row selected with THREAD_COLS."""
    return ThreadInfo(
        workspace_id=row["workspace_id"],
        thread_id=row["thread_id"],
        user_id=row["user_id"],
        title=row["title"],
        ttl_seconds=row["ttl_seconds"],
        pinned=row["pinned"],
        message_count=row["message_count"],
        last_seq=row["last_seq"],
        incarnation=row["incarnation"],
        create_time_us=row["create_us"],
        update_time_us=row["update_us"],
        parent_thread_id=row["parent_thread_id"],
        fork_seq=row["fork_seq"],
        compacted_through=row["compacted_through"],
    )


def message_of(row: Any) -> StoredMessage:
    """Return the StoredMessage of a row selected with MSG_COLS."""
    return StoredMessage(
        seq=row["seq"],
        role=Role(row["role"]),
        content=row["content"],
        name=row["name"],
        metadata=json.loads(row["metadata"]) if row["metadata"] != "{}" else {},
        create_time_us=row["msg_us"],
        encoded=row["encoded"],
    )


def message_columns(rows: Sequence[tuple[ThreadKey, StoredMessage]]) -> list[list[Any]]:
    """Return the arguments of INSERT_MESSAGES, one array per column; the encoded column is encoded here."""
    return [
        [k.workspace_id for k, _ in rows],
        [k.thread_id for k, _ in rows],
        [m.seq for _, m in rows],
        [int(m.role) for _, m in rows],
        [m.content for _, m in rows],
        [m.name for _, m in rows],
        [json.dumps(m.metadata) for _, m in rows],
        [m.create_time_us for _, m in rows],
        [encode_message(k.workspace_id, k.thread_id, m) for k, m in rows],
        [m.message_id or None for _, m in rows],
    ]


def key_columns(keys: Sequence[ThreadKey]) -> tuple[list[str], list[str]]:
    """Return (workspace ids, thread ids) of the keys, as unnest arguments."""
    return [k.workspace_id for k in keys], [k.thread_id for k in keys]


class PgDatabase:
    """The pool that every PostgreSQL part shares, and the one place that maps its errors.

    Args:
        pool: an asyncpg pool.
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @classmethod
    async def connect(
        cls, dsn: str, *, min_size: int, max_size: int, command_timeout_s: float, connect_timeout_s: float
    ) -> PgDatabase:
        """Open a pool; raises StoreUnavailableError if PostgreSQL cannot be reached."""
        try:
            pool = await asyncpg.create_pool(
                dsn,
                min_size=min_size,
                max_size=max_size,
                command_timeout=command_timeout_s,
                timeout=connect_timeout_s,
                max_inactive_connection_lifetime=300.0,
                reset=_keep_session,
            )
        except Exception as exc:
            if is_unavailable(exc):
                raise StoreUnavailableError(f"cannot connect to PostgreSQL: {exc}") from exc
            raise
        return cls(pool)

    async def guard(self, coro: Any) -> Any:
        """Await a query, mapping "PostgreSQL cannot serve" to StoreUnavailableError."""
        # The query runs in its own task so that a caller whose deadline passes is released at once:
        # asyncpg's clean-up of a cancelled query waits for PostgreSQL to answer the cancel request,
        # which a hung server never does. The cancelled task finishes that clean-up on its own.
        task = asyncio.ensure_future(coro)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.cancel()
            task.add_done_callback(_consume)
            raise
        except Exception as exc:
            if is_unavailable(exc):
                raise unavailable(exc) from exc
            raise

    async def migrate(self) -> list[str]:
        """Apply pending migrations under an advisory lock; return the names applied."""
        applied: list[str] = []
        async with self.pool.acquire() as conn:
            await take_lock(conn, "SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
            try:
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    " version integer PRIMARY KEY, name text NOT NULL,"
                    " applied_at timestamptz NOT NULL DEFAULT now())"
                )
                done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
                for mig in migrations.load("postgres"):
                    if mig.version in done:
                        continue
                    async with conn.transaction():
                        await conn.execute(mig.sql)
                        await conn.execute(
                            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", mig.version, mig.name
                        )
                    applied.append(f"{mig.version:04d}_{mig.name}")
            finally:
                await release_lock(conn, "SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
        return applied

    async def close(self) -> None:
        """Close the pool, waiting for connections in use."""
        await self.pool.close()

    def pool_stats(self) -> dict[str, int]:
        """Return the asyncpg pool's ``size`` (open connections), ``idle`` and ``max``."""
        return {
            "size": int(self.pool.get_size()),
            "idle": int(self.pool.get_idle_size()),
            "max": int(self.pool.get_max_size()),
        }
