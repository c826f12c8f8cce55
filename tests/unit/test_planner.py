"""The append planner: seq assignment, dedupe and optimistic checks."""

from __future__ import annotations

from server.errors import AbortedError
from server.storage.models import AppendCommand, AppendResult, NewMessage, Role, ThreadInfo, ThreadKey
from server.storage.sql.planner import Replay, plan_appends

A = ThreadKey("w", "a")
B = ThreadKey("w", "b")


def info(key: ThreadKey, last: int) -> ThreadInfo:
    return ThreadInfo(key.workspace_id, key.thread_id, "", "", None, False, last, last, 1, 0, 0)


def cmd(key: ThreadKey, n: int = 1, rid: str = "", expected: int | None = None) -> AppendCommand:
    return AppendCommand(key, tuple(NewMessage(Role.USER, f"m{i}") for i in range(n)), rid, expected)


def test_seqs_continue_each_thread_in_arrival_order() -> None:
    plan = plan_appends([cmd(A, 2), cmd(B), cmd(A, 3)], {A: info(A, 5), B: info(B, 0)}, {}, now_us=7)
    results = [r for r in plan.results if isinstance(r, AppendResult)]
    assert [r.seqs for r in results] == [[6, 7], [1], [8, 9, 10]]
    assert plan.threads[A].last_seq == 10 and plan.threads[A].message_count == 10
    assert [m.seq for k, m in plan.message_rows if k == A] == [6, 7, 8, 9, 10]
    assert all(m.create_time_us == 7 for _, m in plan.message_rows)


def test_stored_and_in_batch_request_ids_replay() -> None:
    replays = {(A, "old"): Replay(1, 2, 2)}
    plan = plan_appends([cmd(A, 2, "old"), cmd(A, 1, "new"), cmd(A, 1, "new")], {A: info(A, 2)}, replays, 0)
    old, new, dup = plan.results
    assert isinstance(old, AppendResult) and old.replayed and old.seqs == [1, 2] and old.stored == ()
    assert isinstance(new, AppendResult) and not new.replayed and new.seqs == [3]
    assert isinstance(dup, AppendResult) and dup.replayed and dup.seqs == [3]
    assert len(plan.message_rows) == 1
    assert [(rid, r.first_seq) for _, rid, r in plan.request_rows] == [("new", 3)]


def test_expected_last_seq_mismatch_aborts_only_that_command() -> None:
    plan = plan_appends([cmd(A, 1, expected=4), cmd(A, 1, expected=3), cmd(A, 1, expected=4)], {A: info(A, 3)}, {}, 0)
    first, second, third = plan.results
    assert isinstance(first, AbortedError)
    assert isinstance(second, AppendResult) and second.seqs == [4]
    assert isinstance(third, AppendResult) and third.seqs == [5]


def test_a_thread_that_gets_nothing_is_not_touched() -> None:
    plan = plan_appends([cmd(B, 1, expected=9)], {B: info(B, 0)}, {}, 0)
    assert plan.touched == set() and plan.message_rows == []
