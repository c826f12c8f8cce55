"""The client's ForkThread, TruncateThread and CompactThread calls (mixed into MemoryClient)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from chatmem import _convert
from chatmem.errors import ConflictError
from chatmem.types import Message, MessageInput, Thread, Truncation
from chatmem.v1 import thread_memory_service_pb2 as pb
from chatmem.v1 import thread_memory_service_pb2_grpc

_POP_ATTEMPTS = 5


def _new_request_id() -> str:
    return uuid.uuid4().hex


class ReshapeCalls:
    """Fork, truncate, pop and compact; MemoryClient supplies the stub, workspace and retrying call."""

    _threads: thread_memory_service_pb2_grpc.ThreadMemoryServiceStub
    _workspace_id: str

    async def _unary(self, rpc: Any, request: Any, timeout: float | None) -> Any:
        raise NotImplementedError  # MemoryClient's

    async def fork_thread(
        self,
        thread_id: str,
        new_thread_id: str,
        *,
        through_seq: int | None = None,
        user_id: str = "",
        title: str = "",
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Thread:
        """Create ``new_thread_id`` holding ``thread_id``'s messages up to ``through_seq`` (ForkThread).

        The fork's messages are numbered from 1; the new thread records its parent and fork seq. A
        retry that finds the fork already made returns it.

        Args:
            thread_id: the source thread.
            new_thread_id: the new thread's id; it must not exist.
            through_seq: copy the messages up to this seq; None copies them all.
            user_id: the new thread's owner; empty keeps the source's.
            title: the new thread's title; empty keeps the source's.
            request_id: the idempotency key; by default a fresh one.
            timeout: the deadline in seconds, retries included.

        Returns:
            The new thread.

        Raises:
            NotFoundError: the source thread does not exist.
            ConflictError: ``new_thread_id`` exists (ALREADY_EXISTS).
        """
        request = pb.ForkThreadRequest(
            workspace_id=self._workspace_id,
            thread_id=thread_id,
            new_thread_id=new_thread_id,
            user_id=user_id,
            title=title,
            request_id=request_id or _new_request_id(),
        )
        if through_seq is not None:
            request.through_seq = through_seq
        resp: pb.ForkThreadResponse = await self._unary(self._threads.ForkThread, request, timeout)
        return _convert.thread(resp.thread)

    async def truncate_thread(
        self,
        thread_id: str,
        after_seq: int,
        *,
        expected_last_seq: int | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Truncation:
        """Remove the messages after ``after_seq`` (TruncateThread); later appends get larger seqs.

        Args:
            thread_id: the thread.
            after_seq: keep the messages up to this seq; 0 removes them all.
            expected_last_seq: succeed only if the thread's last seq equals it.
            request_id: the idempotency key; by default a fresh one.
            timeout: the deadline in seconds, retries included.

        Returns:
            What was removed, and the thread after it.

        Raises:
            NotFoundError: the thread does not exist.
            ConflictError: ``expected_last_seq`` did not match (ABORTED).
        """
        request = pb.TruncateThreadRequest(
            workspace_id=self._workspace_id,
            thread_id=thread_id,
            after_seq=after_seq,
            request_id=request_id or _new_request_id(),
        )
        if expected_last_seq is not None:
            request.expected_last_seq = expected_last_seq
        resp: pb.TruncateThreadResponse = await self._unary(self._threads.TruncateThread, request, timeout)
        return Truncation(
            removed=tuple(_convert.message(m) for m in resp.removed),
            removed_count=resp.removed_count,
            thread=_convert.thread(resp.thread),
        )

    async def pop_message(self, thread_id: str, *, timeout: float | None = None) -> Message | None:
        """Remove and return the newest message of a thread, or None when it has none.

        It reads the newest message, then truncates after the seq before it on condition that the
        thread's last seq has not moved (``expected_last_seq``), so a concurrent append is never popped
        in its place. A concurrent pop that took the same message makes the truncate remove nothing (a
        thread's last seq never goes down); either race makes it read again, up to 5 times.

        Args:
            thread_id: the thread.
            timeout: the deadline of each call, in seconds.

        Raises:
            ConflictError: the thread changed during every attempt.
        """
        for _ in range(_POP_ATTEMPTS):
            newest = await self._unary(
                self._threads.GetHistory,
                pb.GetHistoryRequest(workspace_id=self._workspace_id, thread_id=thread_id, limit=1),
                timeout,
            )
            if not newest.messages:
                return None
            thread = await self._unary(
                self._threads.GetThread,
                pb.GetThreadRequest(workspace_id=self._workspace_id, thread_id=thread_id),
                timeout,
            )
            seq = newest.messages[-1].seq
            try:
                done = await self.truncate_thread(
                    thread_id, seq - 1, expected_last_seq=thread.thread.last_seq, timeout=timeout
                )
            except ConflictError:
                continue  # an append came between the read and the truncate
            if done.removed:
                return done.removed[-1]
        raise ConflictError(f"thread {thread_id!r} kept changing while popping its newest message; try again")

    async def compact_thread(
        self,
        thread_id: str,
        through_seq: int,
        summary: MessageInput | Mapping[str, Any],
        *,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Thread:
        """Record a summary that stands in for the messages up to ``through_seq`` (CompactThread).

        The window (``get_history``) and ``get_context`` then show the summary in place of those
        messages; ``list_messages`` and ``stream_history`` still return them, marked ``compacted``.

        Args:
            thread_id: the thread.
            through_seq: the last seq the summary covers (at least the previous compaction's).
            summary: the summary, as your model wrote it (a MessageInput or ``{"role", "content"}``).
            request_id: the idempotency key; by default a fresh one.
            timeout: the deadline in seconds, retries included.

        Returns:
            The thread after the compaction.

        Raises:
            NotFoundError: the thread does not exist.
            FailedPreconditionError: through_seq is past the last seq, or below the previous compaction.
        """
        request = pb.CompactThreadRequest(
            workspace_id=self._workspace_id,
            thread_id=thread_id,
            through_seq=through_seq,
            summary=_convert.message_input(summary, "summary"),
            request_id=request_id or _new_request_id(),
        )
        resp: pb.CompactThreadResponse = await self._unary(self._threads.CompactThread, request, timeout)
        return _convert.thread(resp.thread)
