"""Messages on PostgreSQL: group-committed appends (unnest inserts), seeds, and keyset reads."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import asyncpg

from server.storage.codec import (
    COMPACTED_FLAG,
    decode_message,
    encode_messages,
    frame_runs,
    join_runs,
    mark_compacted,
)
from server.storage.models import (
    AppendCommand,
    AppendResult,
    EncodedPage,
    EncodedTail,
    Fence,
    FramedPage,
    NewThreadOptions,
    Repair,
    Seed,
    StoredMessage,
    ThreadKey,
    ThreadTail,
)
from server.storage.sql.planner import Replay, compacted_copy, message_ids, plan_appends
from server.storage.sql.postgres.db import (
    DELETE_EMPTY_THREADS,
    INSERT_MESSAGES,
    MAX_SEQ,
    MSG_COLS,
    THREAD_COLS,
    TS,
    PgDatabase,
    message_columns,
    message_of,
    thread_of,
)
from server.storage.sql.postgres.framing import encoded_tail_sql, framed_page_sql
from server.storage.sql.postgres.repairs import mark, marked

log = logging.getLogger(__name__)


class _ThreadVanishedError(Exception):
    """A thread row was deleted concurrently while a group commit was locking it."""


class PostgresMessages:
    """MessageStore on PostgreSQL.

    Args:
        db: the shared pool.
    """

    def __init__(self, db: PgDatabase) -> None:
        self._db = db

    async def append_batch(
        self, commands: Sequence[AppendCommand], *, repair: Fence | None = None, fallback_gap: int = 0
    ) -> list[AppendResult | Exception]:
        """Commit a group of appends in one transaction (see planner for the rules).

        With ``repair``, the threads are marked for cache repair in the same transaction, and a thread
        not yet marked skips ``fallback_gap`` seqs first.
        """
        for attempt in range(3):
            try:
                return await self._db.guard(self._append_batch(commands, repair, fallback_gap))  # type: ignore[no-any-return]
            except (asyncpg.exceptions.DeadlockDetectedError, _ThreadVanishedError):
                if attempt == 2:
                    raise
                log.warning("a group commit met a concurrent delete or a deadlock; retrying")
        raise AssertionError("unreachable")

    async def _append_batch(
        self, commands: Sequence[AppendCommand], repair: Fence | None, fallback_gap: int
    ) -> list[AppendResult | Exception]:
        keys = sorted({c.key for c in commands}, key=lambda k: (k.workspace_id, k.thread_id))
        first_opts: dict[ThreadKey, NewThreadOptions] = {}
        for c in commands:
            first_opts.setdefault(c.key, c.new_thread)
        ws = [k.workspace_id for k in keys]
        th = [k.thread_id for k in keys]
        rids = [(c.key, c.request_id) for c in commands if c.request_id]
        async with self._db.pool.acquire() as conn, conn.transaction():
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
                f"SELECT {THREAD_COLS} FROM threads t "
                "JOIN unnest($1::text[], $2::text[]) AS k(ws, th) ON t.workspace_id = k.ws AND t.thread_id = k.th "
                "ORDER BY t.workspace_id, t.thread_id FOR UPDATE OF t",
                ws,
                th,
            )
            threads = {ThreadKey(r["workspace_id"], r["thread_id"]): thread_of(r) for r in rows}
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
            around = [k for k in keys if repair is not None and k.bucket in repair]
            if around:
                already = await marked(conn, "a", around)
                gaps = {k: fallback_gap for k in around if k not in already}
            taken = await _taken_ids(conn, message_ids(commands))
            plan = plan_appends(commands, threads, replays, time.time_ns() // 1000, gaps, taken)
            written = [Repair("a", k.workspace_id, k.thread_id) for k in plan.touched if k in around]
            if written:
                await mark(conn, written, repair)
            if plan.message_rows:
                await conn.execute(INSERT_MESSAGES, *message_columns(plan.message_rows))
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
                    f"update_time = {TS.format(arg='u.us')} "
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
                    DELETE_EMPTY_THREADS,
                    [k.workspace_id for k in empty],
                    [k.thread_id for k in empty],
                )
        return plan.results

    async def seed(self, key: ThreadKey, create: NewThreadOptions | None = None) -> Seed:
        """Return the thread's counters; for an unknown thread a fresh incarnation above any deleted one.

        With ``create``, an unknown thread's row is created (empty, with that incarnation) so that it is
        listed before its first messages are flushed.
        """

        async def run() -> Seed:
            async with self._db.pool.acquire() as conn, conn.transaction():
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

        return await self._db.guard(run())  # type: ignore[no-any-return]

    async def _tail_rows(self, key: ThreadKey, limit: int, columns: str) -> list[Any]:
        # The thread and its newest messages in one statement (one snapshot); no rows: no thread. A
        # compacted thread's messages are those after its summary, which the callers put first.
        return await self._db.guard(  # type: ignore[no-any-return]
            self._db.pool.fetch(
                f"SELECT {THREAD_COLS}, t.summary, {columns} FROM threads t LEFT JOIN LATERAL ("
                " SELECT * FROM messages WHERE workspace_id = t.workspace_id AND thread_id = t.thread_id"
                " AND seq > t.compacted_through ORDER BY seq DESC LIMIT $3) m ON true "
                "WHERE t.workspace_id = $1 AND t.thread_id = $2 ORDER BY m.seq",
                key.workspace_id,
                key.thread_id,
                limit,
            )
        )

    async def tail(self, key: ThreadKey, limit: int) -> ThreadTail | None:
        """Return the newest messages and the thread, read in one statement (one snapshot)."""
        rows = await self._tail_rows(key, limit, MSG_COLS)
        if not rows:
            return None
        messages = [message_of(r) for r in rows if r["seq"] is not None]
        summary = rows[0]["summary"]
        if summary is not None and len(messages) < limit:
            messages.insert(0, decode_message(summary))
        return ThreadTail(thread_of(rows[0]), messages)

    async def taken_message_ids(self, key: ThreadKey, ids: Sequence[str]) -> set[str]:
        """Return which of ``ids`` the thread already holds."""
        found: set[tuple[ThreadKey, str]] = await self._db.guard(_taken_ids(self._db.pool, [(key, i) for i in ids]))
        return {i for _, i in found}

    async def encoded_tail(self, key: ThreadKey, limit: int) -> EncodedTail | None:
        """Return the newest messages as stored bytes and the thread, read in one statement (one snapshot)."""
        row = await self._db.guard(self._db.pool.fetchrow(encoded_tail_sql(limit), key.workspace_id, key.thread_id))
        if row is None:
            return None
        items = row["items"] or []
        if None in items:  # rows written before the encoded column existed
            tail = await self.tail(key, limit)
            if tail is None:
                return None
            return EncodedTail(tail.thread, encode_messages(key.workspace_id, key.thread_id, tail.messages))
        summary = row["summary"]
        if summary is not None and len(items) < limit:
            items.insert(0, summary)
        return EncodedTail(thread_of(row), items)

    async def list_messages(self, key: ThreadKey, start_seq: int, reverse: bool, limit: int) -> list[StoredMessage]:
        """Keyset page of messages from start_seq (inclusive)."""
        if reverse:
            sql = "m.seq <= $3 ORDER BY m.seq DESC"
            start = start_seq or MAX_SEQ
        else:
            sql = "m.seq >= $3 ORDER BY m.seq"
            start = start_seq
        rows = await self._db.guard(
            self._db.pool.fetch(
                f"SELECT {MSG_COLS}, m.seq <= t.compacted_through AS compacted FROM messages m "
                "JOIN threads t ON t.workspace_id = m.workspace_id AND t.thread_id = m.thread_id "
                f"WHERE m.workspace_id = $1 AND m.thread_id = $2 AND {sql} LIMIT $4",
                key.workspace_id,
                key.thread_id,
                start,
                limit,
            )
        )
        return [compacted_copy(key, message_of(r), r["compacted"]) for r in rows]

    async def encoded_page(self, key: ThreadKey, start_seq: int, limit: int) -> EncodedPage:
        """Return up to ``limit`` messages from ``start_seq`` (inclusive, ascending) as stored bytes."""
        rows = await self._db.guard(
            self._db.pool.fetch(
                "SELECT m.seq, m.encoded, m.seq <= t.compacted_through FROM messages m "
                "JOIN threads t ON t.workspace_id = m.workspace_id AND t.thread_id = m.thread_id "
                "WHERE m.workspace_id = $1 AND m.thread_id = $2 AND m.seq >= $3 ORDER BY m.seq LIMIT $4",
                key.workspace_id,
                key.thread_id,
                start_seq,
                limit,
            )
        )
        if not rows:
            return EncodedPage([], start_seq - 1)
        items = [mark_compacted(r[1]) if r[2] and r[1] is not None else r[1] for r in rows]
        if None in items:  # rows written before the encoded column existed
            page = await self.list_messages(key, start_seq, False, limit)
            return EncodedPage(encode_messages(key.workspace_id, key.thread_id, page), page[-1].seq if page else 0)
        return EncodedPage(items, rows[-1][0])

    async def framed_page(self, key: ThreadKey, start_seq: int, limit: int, max_bytes: int) -> FramedPage:
        """Return what encoded_page does, framed as repeated field 1 in runs of at most ``max_bytes``.

        PostgreSQL frames each message (framing.framed_page_sql); rows that lack the encoded column are read
        again as messages and framed here.
        """
        rows = await self._db.guard(
            self._db.pool.fetch(framed_page_sql(limit), key.workspace_id, key.thread_id, start_seq, COMPACTED_FLAG)
        )
        if not rows:
            return FramedPage([], 0, start_seq - 1)
        framed = [r[1] for r in rows]
        if None in framed:
            page = await self.encoded_page(key, start_seq, limit)
            return FramedPage(frame_runs(page.items, max_bytes), len(page.items), page.last_seq)
        return FramedPage(join_runs(framed, max_bytes), len(framed), rows[-1][0])


async def _taken_ids(conn: Any, pairs: Sequence[tuple[ThreadKey, str]]) -> set[tuple[ThreadKey, str]]:
    """Return the (thread, message_id) pairs among ``pairs`` that the store already holds."""
    if not pairs:
        return set()
    rows = await conn.fetch(
        "SELECT m.workspace_id, m.thread_id, m.message_id FROM messages m "
        "JOIN unnest($1::text[], $2::text[], $3::text[]) AS k(ws, th, mid) "
        "ON m.workspace_id = k.ws AND m.thread_id = k.th AND m.message_id = k.mid",
        [k.workspace_id for k, _ in pairs],
        [k.thread_id for k, _ in pairs],
        [i for _, i in pairs],
    )
    return {(ThreadKey(r["workspace_id"], r["thread_id"]), r["message_id"]) for r in rows}
