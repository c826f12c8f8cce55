"""StreamHistory that resumes by itself: after a transient failure it reopens the stream after the last seq seen."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from chatmem._retry import RetryPolicy
from chatmem.errors import DeadlineExceededError, from_grpc_error
from chatmem.v1 import resources_pb2

log = logging.getLogger(__name__)

OpenStream = Callable[[int, float | None], Any]
"""Opens a StreamHistory call: (after_seq, timeout) -> a grpc.aio unary-stream call."""


async def resumable_chunks(
    open_stream: OpenStream,
    *,
    after_seq: int,
    policy: RetryPolicy,
    timeout: float | None,
    idle_timeout: float | None,
) -> AsyncIterator[list[resources_pb2.Message]]:
    """Yield the messages of a thread chunk by chunk, each exactly once and in seq order.

    A failure the policy retries (UNAVAILABLE: the server restarted, a connection dropped) reopens the
    stream after the last seq yielded, so the caller sees one uninterrupted sequence. The policy's
    ``max_attempts`` bounds consecutive failures without progress; every chunk received resets it.

    Args:
        open_stream: opens one call.
        after_seq: start after this seq (0: from the start).
        policy: which failures to resume after, and the backoff.
        timeout: the whole stream's time budget in seconds, resumptions included; None for none.
        idle_timeout: the longest wait for one chunk; None for no limit.

    Yields:
        The messages of each chunk that are new.

    Raises:
        ChatmemError: the mapped error of a failure that is not retried.
        DeadlineExceededError: no chunk arrived within ``idle_timeout``.
    """
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    last = after_seq
    failures = 0
    while True:
        remaining = None if deadline is None else max(0.0, deadline - loop.time())
        call = open_stream(last, remaining)
        try:
            while True:
                try:
                    async with asyncio.timeout(idle_timeout):
                        chunk = await call.read()
                except TimeoutError:
                    raise DeadlineExceededError(f"no chunk arrived within {idle_timeout}s") from None
                if chunk is grpc.aio.EOF:
                    return
                # A resumed stream starts after `last`; the filter only guards against a server that repeats.
                fresh = [m for m in chunk.messages if m.seq > last]
                if fresh:
                    last = fresh[-1].seq
                    failures = 0
                    yield fresh
        except grpc.RpcError as exc:
            error = from_grpc_error(exc)
            failures += 1
            if not policy.should_retry(error, failures):
                raise error from exc
            wait = policy.backoff(failures, error.retry_after)
            if deadline is not None and loop.time() + wait >= deadline:
                raise error from exc
            log.info("stream of history interrupted after seq %d (%s); resuming in %.2fs", last, error, wait)
        finally:
            call.cancel()
        await asyncio.sleep(wait)
