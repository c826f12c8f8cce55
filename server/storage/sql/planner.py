"""Pure planning of what both SQL stores write: a group of appends, and a batch of outbox entries.

Both stores lock the threads involved, hand their rows to plan_appends, and write what it returns in
the same transaction, so the seq rules live here once: a thread's seqs strictly increase in commit order
under the thread row's lock, never reused; they are dense (1, 2, 3, ...) except where a fallback write
skips a gap (see server/storage/repository.py).

plan_flush holds the flusher's rules the same way: an entry of a deleted incarnation is skipped, and the
first copy of a request id to reach the store wins.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field

from server.errors import AbortedError, MessageIdExistsError
from server.storage.codec import encode_message, mark_compacted, with_encoding
from server.storage.models import AppendCommand, AppendResult, QueuedAppend, StoredMessage, ThreadInfo, ThreadKey


@dataclass(frozen=True, slots=True)
class Replay:
    """A request_id seen before, and what it returned."""

    first_seq: int
    count: int
    message_count: int


@dataclass(slots=True)
class AppendPlan:
    """What a store must write for a group of appends, and what each command returns."""

    results: list[AppendResult | Exception] = field(default_factory=list)
    message_rows: list[tuple[ThreadKey, StoredMessage]] = field(default_factory=list)
    request_rows: list[tuple[ThreadKey, str, Replay]] = field(default_factory=list)
    threads: dict[ThreadKey, ThreadInfo] = field(default_factory=dict)
    touched: set[ThreadKey] = field(default_factory=set)


def plan_appends(
    commands: Sequence[AppendCommand],
    threads: Mapping[ThreadKey, ThreadInfo],
    replays: Mapping[tuple[ThreadKey, str], Replay],
    now_us: int,
    gaps: Mapping[ThreadKey, int] | None = None,
    taken_ids: Set[tuple[ThreadKey, str]] = frozenset(),
) -> AppendPlan:
    """Plan a group of appends against locked thread rows.

    Args:
        commands: the appends, in arrival order.
        threads: the current row of every thread the commands name (new ones with last_seq 0).
        replays: request ids already stored for these threads.
        now_us: the create time of every message in the group.
        gaps: seqs to skip before a thread's first message in this group (fallback writes leave room
            above any seq that an unreachable Redis may still hold unflushed).
        taken_ids: the (thread, message_id) pairs among the commands' ids that the thread already holds.

    Returns:
        The rows to write and one result or AbortedError per command.
    """
    plan = AppendPlan(threads=dict(threads))
    seen: dict[tuple[ThreadKey, str], Replay] = dict(replays)
    pending_gaps = dict(gaps or {})
    taken = set(taken_ids)
    for cmd in commands:
        thread = plan.threads[cmd.key]
        rid_key = (cmd.key, cmd.request_id)
        if cmd.request_id and rid_key in seen:
            r = seen[rid_key]
            plan.results.append(AppendResult(r.first_seq, r.count, r.message_count, True, thread, ()))
            continue
        if cmd.expected_last_seq is not None and cmd.expected_last_seq != thread.last_seq:
            plan.results.append(
                AbortedError(
                    f"thread {cmd.key.thread_id!r} has last seq {thread.last_seq}, expected {cmd.expected_last_seq}"
                )
            )
            continue
        clash = taken_message_id(cmd, taken)
        if clash is not None:
            plan.results.append(clash)
            continue
        taken.update((cmd.key, m.message_id) for m in cmd.messages if m.message_id)
        first = thread.last_seq + 1 + pending_gaps.pop(cmd.key, 0)
        # Encoded here, once: the store writes these bytes with the rows and the cache pushes them.
        stored = tuple(
            with_encoding(
                cmd.key.workspace_id,
                cmd.key.thread_id,
                StoredMessage(
                    first + i,
                    m.role,
                    m.content,
                    m.name,
                    dict(m.metadata),
                    now_us,
                    message_id=m.message_id,
                    extra=m.extra,
                ),
            )
            for i, m in enumerate(cmd.messages)
        )
        thread = dataclasses.replace(
            thread,
            last_seq=first + len(stored) - 1,
            message_count=thread.message_count + len(stored),
            update_time_us=now_us,
        )
        plan.threads[cmd.key] = thread
        plan.touched.add(cmd.key)
        plan.message_rows.extend((cmd.key, m) for m in stored)
        replay = Replay(first, len(stored), thread.message_count)
        if cmd.request_id:
            seen[rid_key] = replay
            plan.request_rows.append((cmd.key, cmd.request_id, replay))
        plan.results.append(AppendResult(first, len(stored), thread.message_count, False, thread, stored))
    return plan


@dataclass(slots=True)
class FlushPlan:
    """What a store must write for a batch of outbox entries.

    Attributes:
        live: the entries that still count, in outbox order.
        message_rows: their messages, each (thread, seq) once; the store inserts them if absent.
        request_rows: one live entry per (thread, request id), to record the request.
        new_threads: the first live entry of each thread; its options create the thread row if missing.
    """

    live: list[QueuedAppend] = field(default_factory=list)
    message_rows: list[tuple[ThreadKey, StoredMessage]] = field(default_factory=list)
    request_rows: list[QueuedAppend] = field(default_factory=list)
    new_threads: list[QueuedAppend] = field(default_factory=list)


def first_entries(entries: Sequence[QueuedAppend]) -> list[QueuedAppend]:
    """Return the first entry of each thread, in (workspace, thread) order: the order rows are locked in."""
    firsts: dict[ThreadKey, QueuedAppend] = {}
    for e in entries:
        firsts.setdefault(e.key, e)
    return [firsts[k] for k in sorted(firsts, key=lambda k: (k.workspace_id, k.thread_id))]


def plan_flush(
    entries: Sequence[QueuedAppend],
    dead: Mapping[ThreadKey, int],
    known: Mapping[tuple[ThreadKey, str], int],
) -> FlushPlan:
    """Plan the write of outbox entries against the store's tombstones and request records.

    Args:
        entries: the entries, in outbox order (a redelivered entry may appear twice).
        dead: the largest deleted incarnation of each thread that has a tombstone.
        known: the first seq the store already holds for each (thread, request id) of the entries.

    Returns:
        The rows to write. An entry whose incarnation is at most its thread's tombstone is skipped (a
        delete must never be undone by a late flush). An entry whose request id the store (or an earlier
        entry of this batch) holds under another first seq is skipped: it is a retry's twin (its caller
        timed out and the retry went around Redis), never acknowledged itself.
    """
    plan = FlushPlan()
    firsts: dict[tuple[ThreadKey, str], int] = dict(known)
    rows: set[tuple[ThreadKey, int]] = set()
    threads: set[ThreadKey] = set()
    recorded: set[tuple[ThreadKey, str]] = set(known)
    for e in entries:
        if e.incarnation <= dead.get(e.key, -1):
            continue
        if e.request_id:
            rid = (e.key, e.request_id)
            if firsts.setdefault(rid, e.first_seq) != e.first_seq:
                continue
            if rid not in recorded:
                recorded.add(rid)
                plan.request_rows.append(e)
        plan.live.append(e)
        if e.key not in threads:
            threads.add(e.key)
            plan.new_threads.append(e)
        for m in e.messages:
            if (e.key, m.seq) not in rows:
                rows.add((e.key, m.seq))
                plan.message_rows.append((e.key, m))
    return plan


def count_inserted(inserted: Sequence[tuple[ThreadKey, int]]) -> dict[ThreadKey, tuple[int, int]]:
    """Return, per thread, (the newest seq, how many) of the message rows a flush inserted."""
    counts: dict[ThreadKey, tuple[int, int]] = {}
    for key, seq in inserted:
        top, n = counts.get(key, (0, 0))
        counts[key] = (max(top, seq), n + 1)
    return counts


def taken_message_id(cmd: AppendCommand, taken: Set[tuple[ThreadKey, str]]) -> MessageIdExistsError | None:
    """Return the error for the first message of ``cmd`` whose id the thread already holds, if any."""
    for i, m in enumerate(cmd.messages):
        if m.message_id and (cmd.key, m.message_id) in taken:
            return MessageIdExistsError(i, m.message_id, cmd.key.thread_id)
    return None


def message_ids(commands: Sequence[AppendCommand]) -> list[tuple[ThreadKey, str]]:
    """Return every (thread, message_id) pair the commands carry."""
    return [(c.key, m.message_id) for c in commands for m in c.messages if m.message_id]


def compacted_copy(key: ThreadKey, message: StoredMessage, compacted: bool) -> StoredMessage:
    """Return the message, its stored bytes marked as compacted when a summary stands in for it."""
    if not compacted:
        return message
    encoded = mark_compacted(encode_message(key.workspace_id, key.thread_id, message))
    return dataclasses.replace(message, encoded=encoded)
