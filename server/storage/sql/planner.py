"""Pure planning of a group of appends: dedupe by request_id, optimistic checks, seq assignment.

Both stores lock the threads involved, hand their rows to plan_appends, and write what it returns in
the same transaction, so the seq rules live here once: a thread's seqs strictly increase in commit order
under the thread row's lock, never reused; they are dense (1, 2, 3, ...) except where a fallback write
skips a gap (see server/storage/repository.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from server.errors import AbortedError
from server.storage.codec import with_encoding
from server.storage.models import AppendCommand, AppendResult, StoredMessage, ThreadInfo, ThreadKey


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
) -> AppendPlan:
    """Plan a group of appends against locked thread rows.

    Args:
        commands: the appends, in arrival order.
        threads: the current row of every thread the commands name (new ones with last_seq 0).
        replays: request ids already stored for these threads.
        now_us: the create time of every message in the group.
        gaps: seqs to skip before a thread's first message in this group (fallback writes leave room
            above any seq that an unreachable Redis may still hold unflushed).

    Returns:
        The rows to write and one result or AbortedError per command.
    """
    plan = AppendPlan(threads=dict(threads))
    seen: dict[tuple[ThreadKey, str], Replay] = dict(replays)
    pending_gaps = dict(gaps or {})
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
        first = thread.last_seq + 1 + pending_gaps.pop(cmd.key, 0)
        # Encoded here, once: the store writes these bytes with the rows and the cache pushes them.
        stored = tuple(
            with_encoding(
                cmd.key.workspace_id,
                cmd.key.thread_id,
                StoredMessage(first + i, m.role, m.content, m.name, dict(m.metadata), now_us),
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
