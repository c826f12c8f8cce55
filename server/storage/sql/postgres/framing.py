"""Reads that PostgreSQL answers already shaped for the wire: a stream page framed per row, a tail in one row.

A stream page is the bulk of StreamHistory's work. PostgreSQL frames each stored message as an element of
repeated field 1 (tag, length varint, bytes: see codec.frame_item), so that the server only joins the
page's bytes (one C call) and does nothing per message in Python; the page then leaves as one response.
"""

from __future__ import annotations

import functools

from server.storage.sql.postgres.db import THREAD_COLS

_ITEM_TAG = "0a"  # (1 << 3) | 2: field 1, length-delimited


def _varint_framed(n: str, body: str) -> str:
    """Return SQL for ``tag || varint(n) || body`` (``n`` the length of ``body``), for lengths below 2^35."""
    groups = [f"(({n} >> {7 * i}) & 127)" for i in range(5)]
    cases = []
    for size in range(1, 6):
        expr = f"'\\x{_ITEM_TAG}{'00' * size}'::bytea"
        for i in range(size):
            byte = groups[i] if i == size - 1 else f"({groups[i]} | 128)"
            expr = f"set_byte({expr}, {i + 1}, {byte})"
        bound = f"{n} < {1 << (7 * size)}"
        cases.append(expr if size == 5 else f"WHEN {bound} THEN {expr}")
    return f"(CASE {' '.join(cases[:-1])} ELSE {cases[-1]} END || {body})"


# Both statements carry their LIMIT as a literal, one prepared statement per limit (in practice the window
# and the stream chunk). With ``LIMIT $n`` PostgreSQL's generic plan assumes a tenth of the rows, costs far
# more than a custom one, and so every execution is planned again: measured, that planning more than
# doubled PostgreSQL's CPU per window read.


@functools.lru_cache(maxsize=64)
def framed_page_sql(limit: int) -> str:
    """Return the stream page statement: each message of a keyset page framed, in seq order.

    $1 workspace, $2 thread, $3 first seq, $4 the compacted flag (codec.COMPACTED_FLAG). ``framed`` is
    NULL for a row written before the encoded column existed. PostgreSQL frames each row (its CPU per
    message is about a quarter more than selecting ``encoded``), but does not join them: string_agg
    over bytea cost it twice the plain scan, and the join is one C call in Python.
    """
    return (
        "SELECT p.seq, "
        + _varint_framed("length(p.e)", "p.e")
        + " AS framed FROM (SELECT m.seq, CASE WHEN m.seq <= t.compacted_through THEN m.encoded || $4::bytea "
        "ELSE m.encoded END AS e FROM messages m "
        "JOIN threads t ON t.workspace_id = m.workspace_id AND t.thread_id = m.thread_id "
        f"WHERE m.workspace_id = $1 AND m.thread_id = $2 AND m.seq >= $3 ORDER BY m.seq LIMIT {int(limit)}) p"
    )


@functools.lru_cache(maxsize=64)
def encoded_tail_sql(limit: int) -> str:
    """Return the hydration statement: the thread and its newest ``limit`` messages, in one row.

    $1 workspace, $2 thread. One snapshot; no row, no thread. ``items`` holds the stored bytes oldest
    first (after a compaction's summary, which the caller puts first), with NULL elements for rows
    written before the encoded column existed, and is NULL when the thread has no messages: one array
    instead of one row per message that repeats the thread's columns.
    """
    return (
        f"SELECT {THREAD_COLS}, t.summary, m.items FROM threads t LEFT JOIN LATERAL ("
        " SELECT array_agg(x.encoded ORDER BY x.seq) AS items FROM ("
        "  SELECT seq, encoded FROM messages WHERE workspace_id = t.workspace_id AND thread_id = t.thread_id"
        f"  AND seq > t.compacted_through ORDER BY seq DESC LIMIT {int(limit)}) x) m ON true "
        "WHERE t.workspace_id = $1 AND t.thread_id = $2"
    )
