"""The durable store on PostgreSQL through an asyncpg pool, with batched (unnest) inserts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg

from server.storage.codec import encode_message, encode_messages
from server.storage.models import (
    AppendCommand,
    AppendResult,
    EncodedPage,
    EncodedTail,
    NewThreadOptions,
    PreferenceChange,
    PreferenceSet,
    PreferenceValue,
    QueuedAppend,
    Repair,
    Role,
    Seed,
    StoredMessage,
    ThreadCursor,
    ThreadInfo,
    ThreadKey,
    ThreadPatch,
    ThreadTail,
    Trimmed,
)
from server.storage.protocols import StoreUnavailableError
from server.storage.sql import migrations
from server.storage.sql.planner import Replay, plan_appends
from server.storage.sql.postgres.apikeys import PostgresApiKeys

log = logging.getLogger(__name__)

_MAX_SEQ = 2**63 - 1
_US = "(extract(epoch FROM {col}) * 1000000)::bigint"
_TS = "(timestamptz 'epoch' + {arg} * interval '1 microsecond')"
_THREAD_COLS = (
    "t.workspace_id, t.thread_id, t.user_id, t.title, t.ttl_seconds, t.pinned, t.message_count, t.last_seq, "
    f"t.incarnation, {_US.format(col='t.create_time')} AS create_us, {_US.format(col='t.update_time')} AS update_us"
)
_MIGRATION_LOCK = 0x636861746D656D  # "chatmem": one advisory lock id, so replicas migrate one at a time
_RETENTION_LOCK = _MIGRATION_LOCK + 1  # held for a whole retention sweep, so one replica sweeps at a time

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


class _ThreadVanishedError(Exception):
    """A thread row was deleted concurrently while a group commit was locking it."""


def _consume(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.debug("a cancelled store call ended with %r", task.exception())


def _thread(row: Any) -> ThreadInfo:
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
    )


def _message(row: Any) -> StoredMessage:
    return StoredMessage(
        seq=row["seq"],
        role=Role(row["role"]),
        content=row["content"],
        name=row["name"],
        metadata=json.loads(row["metadata"]) if row["metadata"] != "{}" else {},
        create_time_us=row["msg_us"],
        encoded=row["encoded"],
    )


_MSG_COLS = (
    f"m.seq, m.role, m.content, m.name, m.metadata::text AS metadata, {_US.format(col='m.create_time')} AS msg_us, "
    "m.encoded"
)
_INSERT_MESSAGES = (
    "INSERT INTO messages (workspace_id, thread_id, seq, role, content, name, metadata, create_time, encoded) "
    f"SELECT ws, th, seq, role, content, name, meta::jsonb, {_TS.format(arg='us')}, enc "
    "FROM unnest($1::text[], $2::text[], $3::bigint[], $4::smallint[], $5::text[], $6::text[], "
    "$7::text[], $8::bigint[], $9::bytea[]) AS r(ws, th, seq, role, content, name, meta, us, enc)"
)


def _message_columns(rows: Sequence[tuple[ThreadKey, StoredMessage]]) -> list[list[Any]]:
    """Return the arguments of _INSERT_MESSAGES, one array per column; the encoded column is encoded here."""
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
    ]


class PostgresStore(PostgresApiKeys):
    """Store Protocol on PostgreSQL.

    Args:
        pool: an asyncpg pool.
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @classmethod
    async def connect(
        cls, dsn: str, *, min_size: int, max_size: int, command_timeout_s: float, connect_timeout_s: float
    ) -> PostgresStore:
        """Open a pool; raises StoreUnavailableError if PostgreSQL cannot be reached."""
        try:
            pool = await asyncpg.create_pool(
                dsn,
                min_size=min_size,
                max_size=max_size,
                command_timeout=command_timeout_s,
                timeout=connect_timeout_s,
                max_inactive_connection_lifetime=300.0,
            )
        except Exception as exc:
            if is_unavailable(exc):
                raise StoreUnavailableError(f"cannot connect to PostgreSQL: {exc}") from exc
            raise
        return cls(pool)

    async def close(self) -> None:
        """Close the pool, waiting for connections in use."""
        await self._pool.close()

    def pool_stats(self) -> dict[str, int]:
        """Return the asyncpg pool's ``size`` (open connections), ``idle`` and ``max``."""
        return {
            "size": int(self._pool.get_size()),
            "idle": int(self._pool.get_idle_size()),
            "max": int(self._pool.get_max_size()),
        }

    async def migrate(self) -> list[str]:
        """Apply pending migrations under an advisory lock; return the names applied."""
        applied: list[str] = []
        async with self._pool.acquire() as conn:
            await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
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
                await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
        return applied

    async def _guard(self, coro: Any) -> Any:
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
                raise StoreUnavailableError(f"PostgreSQL: {type(exc).__name__}: {exc}") from exc
            raise

    async def append_batch(
        self, commands: Sequence[AppendCommand], *, repair: bool = False, fallback_gap: int = 0
    ) -> list[AppendResult | Exception]:
        """Commit a group of appends in one transaction (see planner for the rules).

        With ``repair``, the threads are marked for cache repair in the same transaction, and a thread
        not yet marked skips ``fallback_gap`` seqs first.
        """
        for attempt in range(3):
            try:
                return await self._guard(self._append_batch(commands, repair, fallback_gap))  # type: ignore[no-any-return]
            except (asyncpg.exceptions.DeadlockDetectedError, _ThreadVanishedError):
                if attempt == 2:
                    raise
                log.warning("a group commit met a concurrent delete or a deadlock; retrying")
        raise AssertionError("unreachable")

    async def _append_batch(
        self, commands: Sequence[AppendCommand], repair: bool, fallback_gap: int
    ) -> list[AppendResult | Exception]:
        keys = sorted({c.key for c in commands}, key=lambda k: (k.workspace_id, k.thread_id))
        first_opts: dict[ThreadKey, NewThreadOptions] = {}
        for c in commands:
            first_opts.setdefault(c.key, c.new_thread)
        ws = [k.workspace_id for k in keys]
        th = [k.thread_id for k in keys]
        rids = [(c.key, c.request_id) for c in commands if c.request_id]
        async with self._pool.acquire() as conn, conn.transaction():
            # Missing threads are inserted (in key order, so concurrent groups lock in one order) and
            # removed again at the end if no command of this group gave them a message.
            await conn.execute(
                "INSERT INTO threads (workspace_id, thread_id, user_id, title, ttl_seconds) "
                "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[]) "
                "ON CONFLICT DO NOTHING",
                ws,
                th,
                [first_opts[k].user_id for k in keys],
                [first_opts[k].title for k in keys],
                [first_opts[k].ttl_seconds for k in keys],
            )
            rows = await conn.fetch(
                f"SELECT {_THREAD_COLS} FROM threads t "
                "JOIN unnest($1::text[], $2::text[]) AS k(ws, th) ON t.workspace_id = k.ws AND t.thread_id = k.th "
                "ORDER BY t.workspace_id, t.thread_id FOR UPDATE OF t",
                ws,
                th,
            )
            threads = {ThreadKey(r["workspace_id"], r["thread_id"]): _thread(r) for r in rows}
            if len(threads) < len(keys):
                # A delete removed a row between our insert (which saw it) and our lock: start over.
                raise _ThreadVanishedError
            replays: dict[tuple[ThreadKey, str], Replay] = {}
            if rids:
                found = await conn.fetch(
                    "SELECT r.workspace_id, r.thread_id, r.request_id, r.first_seq, r.count, r.message_count "
                    "FROM append_requests r JOIN unnest($1::text[], $2::text[], $3::text[]) AS k(ws, th, rid) "
                    "ON r.workspace_id = k.ws AND r.thread_id = k.th AND r.request_id = k.rid",
                    [k.workspace_id for k, _ in rids],
                    [k.thread_id for k, _ in rids],
                    [r for _, r in rids],
                )
                for r in found:
                    key = ThreadKey(r["workspace_id"], r["thread_id"])
                    replays[(key, r["request_id"])] = Replay(r["first_seq"], r["count"], r["message_count"])
            gaps: dict[ThreadKey, int] = {}
            if repair:
                marked = await self._marked(conn, "a", keys)
                gaps = {k: fallback_gap for k in keys if k not in marked}
            plan = plan_appends(commands, threads, replays, time.time_ns() // 1000, gaps)
            if repair and plan.touched:
                await self._mark(conn, [Repair("a", k.workspace_id, k.thread_id) for k in plan.touched])
            if plan.message_rows:
                await conn.execute(_INSERT_MESSAGES, *_message_columns(plan.message_rows))
            if plan.request_rows:
                await conn.execute(
                    "INSERT INTO append_requests "
                    "(workspace_id, thread_id, request_id, first_seq, count, message_count) "
                    "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::int[], $6::bigint[])",
                    [k.workspace_id for k, _, _ in plan.request_rows],
                    [k.thread_id for k, _, _ in plan.request_rows],
                    [rid for _, rid, _ in plan.request_rows],
                    [r.first_seq for _, _, r in plan.request_rows],
                    [r.count for _, _, r in plan.request_rows],
                    [r.message_count for _, _, r in plan.request_rows],
                )
            touched = sorted(plan.touched, key=lambda k: (k.workspace_id, k.thread_id))
            if touched:
                await conn.execute(
                    "UPDATE threads t SET last_seq = u.last_seq, message_count = u.mc, "
                    f"update_time = {_TS.format(arg='u.us')} "
                    "FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[]) "
                    "AS u(ws, th, last_seq, mc, us) "
                    "WHERE t.workspace_id = u.ws AND t.thread_id = u.th",
                    [k.workspace_id for k in touched],
                    [k.thread_id for k in touched],
                    [plan.threads[k].last_seq for k in touched],
                    [plan.threads[k].message_count for k in touched],
                    [plan.threads[k].update_time_us for k in touched],
                )
            empty = [k for k in keys if plan.threads[k].last_seq == 0]
            if empty:
                await conn.execute(
                    "DELETE FROM threads t USING unnest($1::text[], $2::text[]) AS k(ws, th) "
                    "WHERE t.workspace_id = k.ws AND t.thread_id = k.th AND t.last_seq = 0",
                    [k.workspace_id for k in empty],
                    [k.thread_id for k in empty],
                )
        return plan.results

    async def _tail_rows(self, key: ThreadKey, limit: int, columns: str) -> list[Any]:
        # The thread and its newest messages in one statement (one snapshot); no rows: no thread.
        return await self._guard(  # type: ignore[no-any-return]
            self._pool.fetch(
                f"SELECT {_THREAD_COLS}, {columns} FROM threads t LEFT JOIN LATERAL ("
                " SELECT * FROM messages WHERE workspace_id = t.workspace_id AND thread_id = t.thread_id"
                " ORDER BY seq DESC LIMIT $3) m ON true "
                "WHERE t.workspace_id = $1 AND t.thread_id = $2 ORDER BY m.seq",
                key.workspace_id,
                key.thread_id,
                limit,
            )
        )

    async def tail(self, key: ThreadKey, limit: int) -> ThreadTail | None:
        """Return the newest messages and the thread, read in one statement (one snapshot)."""
        rows = await self._tail_rows(key, limit, _MSG_COLS)
        if not rows:
            return None
        return ThreadTail(_thread(rows[0]), [_message(r) for r in rows if r["seq"] is not None])

    async def encoded_tail(self, key: ThreadKey, limit: int) -> EncodedTail | None:
        """Return the newest messages as stored bytes and the thread, read in one statement (one snapshot)."""
        rows = await self._tail_rows(key, limit, "m.seq, m.encoded")
        if not rows:
            return None
        items = [r["encoded"] for r in rows if r["seq"] is not None]
        if None in items:  # rows written before the encoded column existed
            tail = await self.tail(key, limit)
            if tail is None:
                return None
            return EncodedTail(tail.thread, encode_messages(key.workspace_id, key.thread_id, tail.messages))
        return EncodedTail(_thread(rows[0]), items)

    async def list_messages(self, key: ThreadKey, start_seq: int, reverse: bool, limit: int) -> list[StoredMessage]:
        """Keyset page of messages from start_seq (inclusive)."""
        if reverse:
            sql = "m.seq <= $3 ORDER BY m.seq DESC"
            start = start_seq or _MAX_SEQ
        else:
            sql = "m.seq >= $3 ORDER BY m.seq"
            start = start_seq
        rows = await self._guard(
            self._pool.fetch(
                f"SELECT {_MSG_COLS} FROM messages m WHERE m.workspace_id = $1 AND m.thread_id = $2 AND {sql} LIMIT $4",
                key.workspace_id,
                key.thread_id,
                start,
                limit,
            )
        )
        return [_message(r) for r in rows]

    async def encoded_page(self, key: ThreadKey, start_seq: int, limit: int) -> EncodedPage:
        """Return up to ``limit`` messages from ``start_seq`` (inclusive, ascending) as stored bytes."""
        rows = await self._guard(
            self._pool.fetch(
                "SELECT seq, encoded FROM messages WHERE workspace_id = $1 AND thread_id = $2 AND seq >= $3 "
                "ORDER BY seq LIMIT $4",
                key.workspace_id,
                key.thread_id,
                start_seq,
                limit,
            )
        )
        if not rows:
            return EncodedPage([], start_seq - 1)
        items = [r[1] for r in rows]
        if None in items:  # rows written before the encoded column existed
            page = await self.list_messages(key, start_seq, False, limit)
            return EncodedPage(encode_messages(key.workspace_id, key.thread_id, page), page[-1].seq if page else 0)
        return EncodedPage(items, rows[-1][0])

    async def get_thread(self, key: ThreadKey) -> ThreadInfo | None:
        """Return a thread's metadata, or None."""
        row = await self._guard(
            self._pool.fetchrow(
                f"SELECT {_THREAD_COLS} FROM threads t WHERE t.workspace_id = $1 AND t.thread_id = $2",
                key.workspace_id,
                key.thread_id,
            )
        )
        return _thread(row) if row else None

    async def list_threads(
        self, workspace_id: str, user_id: str, after: ThreadCursor | None, limit: int
    ) -> list[ThreadInfo]:
        """Keyset page of a user's threads, newest first."""
        args: list[Any] = [workspace_id, user_id, limit]
        cond = ""
        if after is not None:
            cond = f"AND (t.create_time, t.thread_id) < ({_TS.format(arg='$4::bigint')}, $5)"
            args += [after.create_time_us, after.thread_id]
        rows = await self._guard(
            self._pool.fetch(
                f"SELECT {_THREAD_COLS} FROM threads t WHERE t.workspace_id = $1 AND t.user_id = $2 {cond} "
                "ORDER BY t.create_time DESC, t.thread_id DESC LIMIT $3",
                *args,
            )
        )
        return [_thread(r) for r in rows]

    async def update_thread(self, key: ThreadKey, patch: ThreadPatch, *, repair: bool = False) -> ThreadInfo | None:
        """Apply a patch; ttl_seconds 0 restores the default TTL."""

        async def run() -> ThreadInfo | None:
            async with self._pool.acquire() as conn, conn.transaction():
                row = await conn.fetchrow(
                    "UPDATE threads t SET title = COALESCE($3, t.title), "
                    "ttl_seconds = CASE WHEN $4::int IS NULL THEN t.ttl_seconds "
                    "WHEN $4::int = 0 THEN NULL ELSE $4::int END, "
                    "pinned = COALESCE($5, t.pinned), update_time = clock_timestamp() "
                    f"WHERE t.workspace_id = $1 AND t.thread_id = $2 RETURNING {_THREAD_COLS}",
                    key.workspace_id,
                    key.thread_id,
                    patch.title,
                    patch.ttl_seconds,
                    patch.pinned,
                )
                if row is not None and repair:
                    await self._mark(conn, [Repair("t", key.workspace_id, key.thread_id)])
                return _thread(row) if row else None

        return await self._guard(run())  # type: ignore[no-any-return]

    async def delete_thread(
        self, key: ThreadKey, *, tombstone_incarnation: int = 0, repair: bool = False, idle_before_us: int | None = None
    ) -> tuple[ThreadInfo | None, int]:
        """Delete a thread, its messages and request records, and leave a tombstone.

        The tombstone holds the largest incarnation deleted (the row's, or ``tombstone_incarnation``
        for a thread the outbox still holds), so that a late flush of it is skipped. With
        ``idle_before_us``, a thread changed since then is left alone and nothing is written.

        Returns:
            (the deleted row or None, messages deleted).
        """

        async def run() -> tuple[ThreadInfo | None, int]:
            async with self._pool.acquire() as conn, conn.transaction():
                # The DELETE waits for an append holding the row and then re-checks update_time, so a
                # thread written meanwhile is no longer idle and survives.
                row = await conn.fetchrow(
                    "DELETE FROM threads t WHERE t.workspace_id = $1 AND t.thread_id = $2 "
                    f"AND ($3::bigint IS NULL OR t.update_time < {_TS.format(arg='$3::bigint')}) "
                    f"RETURNING {_THREAD_COLS}",
                    key.workspace_id,
                    key.thread_id,
                    idle_before_us,
                )
                thread = _thread(row) if row else None
                if thread is None and idle_before_us is not None:
                    return None, 0
                incarnation = max(tombstone_incarnation, thread.incarnation if thread else 0)
                count = 0
                if thread is not None:
                    status = await conn.execute(
                        "DELETE FROM messages WHERE workspace_id = $1 AND thread_id = $2",
                        key.workspace_id,
                        key.thread_id,
                    )
                    count = int(status.split()[-1])
                    await conn.execute(
                        "DELETE FROM append_requests WHERE workspace_id = $1 AND thread_id = $2",
                        key.workspace_id,
                        key.thread_id,
                    )
                if incarnation:
                    await conn.execute(
                        "INSERT INTO thread_tombstones (workspace_id, thread_id, incarnation) VALUES ($1, $2, $3) "
                        "ON CONFLICT (workspace_id, thread_id) DO UPDATE SET "
                        "incarnation = GREATEST(thread_tombstones.incarnation, excluded.incarnation), "
                        "delete_time = clock_timestamp()",
                        key.workspace_id,
                        key.thread_id,
                        incarnation,
                    )
                if repair:
                    await self._mark(conn, [Repair("t", key.workspace_id, key.thread_id)])
                return thread, count

        return await self._guard(run())  # type: ignore[no-any-return]

    async def idle_threads(self, cutoff_us: int, after: ThreadInfo | None, limit: int) -> list[ThreadInfo]:
        """Return threads last changed before ``cutoff_us``, oldest change first, after the cursor thread."""
        args: list[Any] = [cutoff_us, limit]
        cond = ""
        if after is not None:
            cond = f"AND (t.update_time, t.workspace_id, t.thread_id) > ({_TS.format(arg='$3::bigint')}, $4, $5)"
            args += [after.update_time_us, after.workspace_id, after.thread_id]
        rows = await self._guard(
            self._pool.fetch(
                f"SELECT {_THREAD_COLS} FROM threads t WHERE t.update_time < {_TS.format(arg='$1::bigint')} {cond} "
                "ORDER BY t.update_time, t.workspace_id, t.thread_id LIMIT $2",
                *args,
            )
        )
        return [_thread(r) for r in rows]

    async def trim_messages(self, cutoff_us: int, limit: int) -> list[Trimmed]:
        """Delete up to ``limit`` messages created before ``cutoff_us``; lower their threads' counts.

        The threads are locked first, in key order as appends and deletes lock them, so the sweep never
        deadlocks with them; the messages are then deleted only if still there and still old, so a
        concurrent sweep never counts a message twice.
        """
        for attempt in range(3):
            try:
                return await self._guard(self._trim_messages(cutoff_us, limit))  # type: ignore[no-any-return]
            except asyncpg.exceptions.DeadlockDetectedError:
                if attempt == 2:
                    raise
                log.warning("a retention batch met a deadlock; retrying")
        raise AssertionError("unreachable")

    async def _trim_messages(self, cutoff_us: int, limit: int) -> list[Trimmed]:
        cutoff = _TS.format(arg="$1::bigint")
        async with self._pool.acquire() as conn, conn.transaction():
            found = await conn.fetch(
                f"SELECT workspace_id, thread_id, seq FROM messages WHERE create_time < {cutoff} "
                "ORDER BY create_time LIMIT $2",
                cutoff_us,
                limit,
            )
            if not found:
                return []
            keys = sorted({(r["workspace_id"], r["thread_id"]) for r in found})
            await conn.execute(
                "SELECT 1 FROM threads t JOIN unnest($1::text[], $2::text[]) AS k(ws, th) "
                "ON t.workspace_id = k.ws AND t.thread_id = k.th ORDER BY t.workspace_id, t.thread_id FOR UPDATE OF t",
                [k[0] for k in keys],
                [k[1] for k in keys],
            )
            gone = await conn.fetch(
                "WITH gone AS (DELETE FROM messages m "
                "USING unnest($2::text[], $3::text[], $4::bigint[]) AS d(ws, th, seq) "
                "WHERE m.workspace_id = d.ws AND m.thread_id = d.th AND m.seq = d.seq "
                f"AND m.create_time < {cutoff} RETURNING m.workspace_id, m.thread_id) "
                "SELECT workspace_id, thread_id, count(*) AS n FROM gone GROUP BY workspace_id, thread_id",
                cutoff_us,
                [r["workspace_id"] for r in found],
                [r["thread_id"] for r in found],
                [r["seq"] for r in found],
            )
            if not gone:
                return []
            counted = await conn.fetch(
                "UPDATE threads t SET message_count = GREATEST(t.message_count - u.n, 0) "
                "FROM unnest($1::text[], $2::text[], $3::bigint[]) AS u(ws, th, n) "
                "WHERE t.workspace_id = u.ws AND t.thread_id = u.th "
                "RETURNING t.workspace_id, t.thread_id, t.incarnation",
                [r["workspace_id"] for r in gone],
                [r["thread_id"] for r in gone],
                [r["n"] for r in gone],
            )
        incarnations = {(r["workspace_id"], r["thread_id"]): r["incarnation"] for r in counted}
        return [
            Trimmed(
                ThreadKey(r["workspace_id"], r["thread_id"]),
                incarnations.get((r["workspace_id"], r["thread_id"]), 0),
                r["n"],
            )
            for r in gone
        ]

    @contextlib.asynccontextmanager
    async def retention_lease(self) -> AsyncIterator[bool]:
        """Hold a session advisory lock for the sweep; yields False when another replica holds it.

        The lock lives on one pooled connection held for the sweep, so a replica that dies releases it.
        """
        try:
            conn = await self._pool.acquire()
        except Exception as exc:
            if is_unavailable(exc):
                raise StoreUnavailableError(f"PostgreSQL: {type(exc).__name__}: {exc}") from exc
            raise
        try:
            try:
                held = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", _RETENTION_LOCK))
            except Exception as exc:
                if is_unavailable(exc):
                    raise StoreUnavailableError(f"PostgreSQL: {type(exc).__name__}: {exc}") from exc
                raise
            try:
                yield held
            finally:
                if held:
                    with contextlib.suppress(Exception):  # a dead connection has released it already
                        await conn.execute("SELECT pg_advisory_unlock($1)", _RETENTION_LOCK)
        finally:
            await self._pool.release(conn)

    async def seed(self, key: ThreadKey, create: NewThreadOptions | None = None) -> Seed:
        """Return the thread's counters; for an unknown thread a fresh incarnation above any deleted one.

        With ``create``, an unknown thread's row is created (empty, with that incarnation) so that it is
        listed before its first messages are flushed.
        """

        async def run() -> Seed:
            async with self._pool.acquire() as conn, conn.transaction():
                row = await conn.fetchrow(
                    "SELECT t.last_seq, t.message_count, t.incarnation, t.ttl_seconds, t.pinned, "
                    "(SELECT incarnation FROM thread_tombstones d WHERE d.workspace_id = $1 AND d.thread_id = $2) "
                    "AS dead FROM (SELECT 1) one LEFT JOIN threads t ON t.workspace_id = $1 AND t.thread_id = $2",
                    key.workspace_id,
                    key.thread_id,
                )
                dead = row["dead"] or 0
                if row["incarnation"] is not None:
                    return Seed(
                        True, row["last_seq"], row["message_count"], row["incarnation"], row["ttl_seconds"],
                        row["pinned"], dead,
                    )  # fmt: skip
                incarnation = max(time.time_ns() // 1000, dead + 1)
                if create is not None:
                    await conn.execute(
                        "INSERT INTO threads (workspace_id, thread_id, user_id, title, ttl_seconds, incarnation) "
                        "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                        key.workspace_id,
                        key.thread_id,
                        create.user_id,
                        create.title,
                        create.ttl_seconds,
                        incarnation,
                    )
                return Seed(False, 0, 0, incarnation, dead_incarnation=dead)

        return await self._guard(run())  # type: ignore[no-any-return]

    async def apply_queued(self, entries: Sequence[QueuedAppend]) -> int:
        """Write outbox entries idempotently; skip deleted incarnations. Returns the messages inserted."""
        return await self._guard(self._apply_queued(entries))  # type: ignore[no-any-return]

    async def _apply_queued(self, entries: Sequence[QueuedAppend]) -> int:
        firsts: dict[ThreadKey, QueuedAppend] = {}
        for e in entries:
            firsts.setdefault(e.key, e)
        keys = sorted(firsts, key=lambda k: (k.workspace_id, k.thread_id))
        ws = [k.workspace_id for k in keys]
        th = [k.thread_id for k in keys]
        async with self._pool.acquire() as conn, conn.transaction():
            opts = [firsts[k].new_thread or NewThreadOptions() for k in keys]
            created = await conn.fetch(
                "INSERT INTO threads (workspace_id, thread_id, user_id, title, ttl_seconds, incarnation, "
                "create_time, update_time) "
                f"SELECT ws, th, u, ti, ttl, inc, {_TS.format(arg='us')}, {_TS.format(arg='us')} "
                "FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[], $6::bigint[], $7::bigint[]) "
                "AS r(ws, th, u, ti, ttl, inc, us) ON CONFLICT DO NOTHING RETURNING workspace_id, thread_id",
                ws,
                th,
                [o.user_id for o in opts],
                [o.title for o in opts],
                [o.ttl_seconds for o in opts],
                [firsts[k].incarnation for k in keys],
                [firsts[k].messages[0].create_time_us if firsts[k].messages else 0 for k in keys],
            )
            # Lock the rows (a concurrent delete finishes first), then read tombstones as of now.
            await conn.execute(
                "SELECT 1 FROM threads t JOIN unnest($1::text[], $2::text[]) AS k(ws, th) "
                "ON t.workspace_id = k.ws AND t.thread_id = k.th ORDER BY t.workspace_id, t.thread_id FOR UPDATE OF t",
                ws,
                th,
            )
            dead = {
                ThreadKey(r["workspace_id"], r["thread_id"]): r["incarnation"]
                for r in await conn.fetch(
                    "SELECT d.workspace_id, d.thread_id, d.incarnation FROM thread_tombstones d "
                    "JOIN unnest($1::text[], $2::text[]) AS k(ws, th) ON d.workspace_id = k.ws AND d.thread_id = k.th",
                    ws,
                    th,
                )
            }
            live = [e for e in entries if e.incarnation > dead.get(e.key, -1)]
            requested = [e for e in live if e.request_id]
            if requested:
                # The first copy of a request id to reach the store wins: a queued append whose id the
                # store already holds under other seqs is a retry's twin (its caller timed out and the
                # retry went around Redis), never acknowledged itself.
                known = {
                    (ThreadKey(r["workspace_id"], r["thread_id"]), r["request_id"]): r["first_seq"]
                    for r in await conn.fetch(
                        "SELECT a.workspace_id, a.thread_id, a.request_id, a.first_seq FROM append_requests a "
                        "JOIN unnest($1::text[], $2::text[], $3::text[]) AS k(ws, th, rid) "
                        "ON a.workspace_id = k.ws AND a.thread_id = k.th AND a.request_id = k.rid",
                        [e.key.workspace_id for e in requested],
                        [e.key.thread_id for e in requested],
                        [e.request_id for e in requested],
                    )
                }
                live = [e for e in live if known.get((e.key, e.request_id), e.first_seq) == e.first_seq]
            rows = [(e.key, m) for e in live for m in e.messages]
            inserted = []
            if rows:
                inserted = await conn.fetch(
                    _INSERT_MESSAGES + " ON CONFLICT DO NOTHING RETURNING workspace_id, thread_id, seq",
                    *_message_columns(rows),
                )
            requests = [e for e in live if e.request_id]
            if requests:
                await conn.execute(
                    "INSERT INTO append_requests "
                    "(workspace_id, thread_id, request_id, first_seq, count, message_count) "
                    "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::int[], $6::bigint[]) "
                    "ON CONFLICT DO NOTHING",
                    [e.key.workspace_id for e in requests],
                    [e.key.thread_id for e in requests],
                    [e.request_id for e in requests],
                    [e.first_seq for e in requests],
                    [len(e.messages) for e in requests],
                    [e.message_count for e in requests],
                )
            added: dict[ThreadKey, list[int]] = {}
            for r in inserted:
                added.setdefault(ThreadKey(r["workspace_id"], r["thread_id"]), []).append(r["seq"])
            if added:
                touched = sorted(added, key=lambda k: (k.workspace_id, k.thread_id))
                await conn.execute(
                    "UPDATE threads t SET last_seq = GREATEST(t.last_seq, u.top), "
                    "message_count = t.message_count + u.n, "
                    "update_time = clock_timestamp() "
                    "FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[]) AS u(ws, th, top, n) "
                    "WHERE t.workspace_id = u.ws AND t.thread_id = u.th",
                    [k.workspace_id for k in touched],
                    [k.thread_id for k in touched],
                    [max(added[k]) for k in touched],
                    [len(added[k]) for k in touched],
                )
            # A row this batch created for a thread that turned out deleted holds nothing: remove it.
            if created:
                await conn.execute(
                    "DELETE FROM threads t USING unnest($1::text[], $2::text[]) AS k(ws, th) "
                    "WHERE t.workspace_id = k.ws AND t.thread_id = k.th AND t.last_seq = 0",
                    [r["workspace_id"] for r in created],
                    [r["thread_id"] for r in created],
                )
        return len(inserted)

    async def _marked(self, conn: Any, kind: str, keys: Sequence[ThreadKey]) -> set[ThreadKey]:
        rows = await conn.fetch(
            "SELECT r.workspace_id, r.object_id FROM cache_repairs r "
            "JOIN unnest($2::text[], $3::text[]) AS k(ws, id) ON r.workspace_id = k.ws AND r.object_id = k.id "
            "WHERE r.kind = $1",
            kind,
            [k.workspace_id for k in keys],
            [k.thread_id for k in keys],
        )
        return {ThreadKey(r["workspace_id"], r["object_id"]) for r in rows}

    async def _mark(self, conn: Any, repairs: Sequence[Repair]) -> None:
        await conn.execute(
            "INSERT INTO cache_repairs (kind, workspace_id, object_id) "
            "SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) "
            "ON CONFLICT (kind, workspace_id, object_id) DO UPDATE SET create_time = clock_timestamp()",
            [r.kind for r in repairs],
            [r.workspace_id for r in repairs],
            [r.object_id for r in repairs],
        )

    async def mark_repairs(self, repairs: Sequence[Repair]) -> None:
        """Mark cache entries as possibly stale."""

        async def run() -> None:
            async with self._pool.acquire() as conn:
                await self._mark(conn, repairs)

        await self._guard(run())

    async def list_repairs(self, limit: int) -> list[Repair]:
        """Return cache entries marked as possibly stale, oldest first."""
        rows = await self._guard(
            self._pool.fetch(
                f"SELECT kind, workspace_id, object_id, {_US.format(col='create_time')} AS us "
                "FROM cache_repairs ORDER BY create_time LIMIT $1",
                limit,
            )
        )
        return [Repair(r["kind"], r["workspace_id"], r["object_id"], r["us"]) for r in rows]

    async def clear_repairs(self, repairs: Sequence[Repair]) -> None:
        """Forget repairs applied to the cache, unless marked again since they were listed."""
        await self._guard(
            self._pool.execute(
                "DELETE FROM cache_repairs r "
                "USING unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) AS k(kind, ws, id, us) "
                "WHERE r.kind = k.kind AND r.workspace_id = k.ws AND r.object_id = k.id "
                f"AND r.create_time <= {_TS.format(arg='k.us')}",
                [r.kind for r in repairs],
                [r.workspace_id for r in repairs],
                [r.object_id for r in repairs],
                [r.marked_us for r in repairs],
            )
        )

    async def get_preferences(self, workspace_id: str, user_id: str) -> PreferenceSet:
        """Return a user's preferences and their version, in one snapshot."""
        rows = await self._guard(
            self._pool.fetch(
                f"SELECT s.version, p.key, p.value, {_US.format(col='p.update_time')} AS us "
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
        self, workspace_id: str, user_id: str, values: dict[str, str], *, repair: bool = False
    ) -> PreferenceChange:
        """Upsert keys and bump the version."""
        now_us = time.time_ns() // 1000

        async def run() -> PreferenceChange:
            async with self._pool.acquire() as conn, conn.transaction():
                version = await self._bump(conn, workspace_id, user_id)
                await conn.execute(
                    "INSERT INTO preferences (workspace_id, user_id, key, value, update_time) "
                    f"SELECT $1, $2, k, v, {_TS.format(arg='$5::bigint')} "
                    "FROM unnest($3::text[], $4::text[]) AS u(k, v) "
                    "ON CONFLICT (workspace_id, user_id, key) DO UPDATE "
                    "SET value = excluded.value, update_time = excluded.update_time",
                    workspace_id,
                    user_id,
                    list(values),
                    list(values.values()),
                    now_us,
                )
                if repair:
                    await self._mark(conn, [Repair("u", workspace_id, user_id)])
            set_values = {k: PreferenceValue(v, now_us) for k, v in values.items()}
            return PreferenceChange(version, set_values, (), False, len(values))

        return await self._guard(run())  # type: ignore[no-any-return]

    async def delete_preferences(
        self, workspace_id: str, user_id: str, keys: Sequence[str] | None, *, repair: bool = False
    ) -> PreferenceChange:
        """Delete some keys (None: all) and bump the version."""

        async def run() -> PreferenceChange:
            async with self._pool.acquire() as conn, conn.transaction():
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
                if repair:
                    await self._mark(conn, [Repair("u", workspace_id, user_id)])
            return PreferenceChange(version, {}, tuple(keys or ()), keys is None, int(status.split()[-1]))

        return await self._guard(run())  # type: ignore[no-any-return]
