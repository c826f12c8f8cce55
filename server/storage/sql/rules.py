"""The checks that fork, truncate and compact make under the thread's lock, shared by both SQL stores."""

from __future__ import annotations

from server.errors import AbortedError, CompactionRangeError
from server.storage.models import ThreadInfo


def check_compaction(thread: ThreadInfo, through_seq: int) -> None:
    """Refuse a compaction past the thread's last seq or below its current one."""
    if through_seq > thread.last_seq:
        raise CompactionRangeError(
            f"through_seq {through_seq} is past the last seq {thread.last_seq} of thread {thread.thread_id!r}"
        )
    if through_seq < thread.compacted_through:
        raise CompactionRangeError(
            f"thread {thread.thread_id!r} is compacted through seq {thread.compacted_through}; through_seq "
            f"{through_seq} would undo part of it"
        )


def check_expected(thread: ThreadInfo, expected_last_seq: int | None) -> None:
    """Refuse a truncate whose expected_last_seq is not the thread's last seq."""
    if expected_last_seq is not None and expected_last_seq != thread.last_seq:
        raise AbortedError(f"thread {thread.thread_id!r} has last seq {thread.last_seq}, expected {expected_last_seq}")
