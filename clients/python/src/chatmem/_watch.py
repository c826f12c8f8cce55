"""WatchThread that resumes by itself: after a dropped stream it reopens it after the last seq received."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from chatmem import _convert
from chatmem._retry import RetryPolicy
from chatmem.errors import from_grpc_error
from chatmem.types import Message
from chatmem.v1 import thread_memory_service_pb2

log = logging.getLogger(__name__)


async def watch_thread(
    stub: Any,
    workspace_id: str,
    thread_id: str,
    *,
    after_seq: int,
    policy: RetryPolicy,
    timeout: float | None,
    max_failures: int | None,
) -> AsyncIterator[Message]:
    """Yield each message appended to a thread after ``after_seq``, exactly once and in seq order, live.

    A failure the policy retries (UNAVAILABLE: a server restart or shutdown, a dropped connection) reopens
    the watch after the last seq yielded, after the policy's backoff; nothing is missed or repeated.

    Args:
        stub: the ThreadMemoryService stub.
        workspace_id: the workspace ("" for the server's default).
        thread_id: the thread.
        after_seq: start after this seq (0: the whole thread, then each new message).
        policy: which failures to resume after, and the backoff.
        timeout: stop (without an error) after this many seconds; None to watch until the caller stops.
        max_failures: consecutive failed attempts without a message before giving up; None for no limit.

    Raises:
        ChatmemError: a failure that is not retried (NOT_FOUND: the thread was deleted; RESOURCE_EXHAUSTED: too
            many watches), or the last one once ``max_failures`` is reached.
    """
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    last = after_seq
    failures = 0
    while True:
        remaining = None if deadline is None else deadline - loop.time()
        if remaining is not None and remaining <= 0:
            return
        request = thread_memory_service_pb2.WatchThreadRequest(
            workspace_id=workspace_id, thread_id=thread_id, after_seq=last
        )
        call = stub.WatchThread(request, timeout=remaining)
        try:
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    return
                for m in response.messages:
                    if m.seq > last:  # a resumed watch starts after `last`; this only guards against repeats
                        last = m.seq
                        failures = 0
                        yield _convert.message(m)
        except grpc.RpcError as exc:
            error = from_grpc_error(exc)
            if error.code == grpc.StatusCode.DEADLINE_EXCEEDED and deadline is not None and loop.time() >= deadline:
                return
            failures += 1
            if not (error.code in policy.retryable and (max_failures is None or failures < max_failures)):
                raise error from exc
            wait = policy.backoff(min(failures, 16), error.retry_after)
            log.info("watch of %s interrupted after seq %d (%s); resuming in %.2fs", thread_id, last, error, wait)
        finally:
            call.cancel()
        await asyncio.sleep(wait)
