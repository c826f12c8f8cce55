"""The retry policy of idempotent calls: which failures to retry, how long to back off, within the deadline."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc

from chatmem.errors import ChatmemError, from_grpc_error

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How the client retries a call that failed transiently.

    Every call the client makes is safe to repeat: reads change nothing, and every mutating call carries
    a ``request_id`` that the client generates once per call and sends again on each attempt, so the
    server stores nothing twice. A retry waits ``initial_backoff_s * multiplier ** (attempt - 1)``
    seconds (at most ``max_backoff_s``, give or take ``jitter``), or longer if the server asked for it
    with a ``google.rpc.RetryInfo``; it is never started if it could not finish before the call's deadline.

    Attributes:
        max_attempts: attempts in all, the first included; 1 turns retries off. For ``stream_history``
            it counts consecutive failed attempts to resume without receiving a message.
        initial_backoff_s: the wait before the first retry.
        max_backoff_s: the longest wait between attempts.
        multiplier: the growth of the wait per attempt.
        jitter: the fraction by which each wait varies at random, so that clients do not retry in step.
        retryable: the status codes worth retrying.
    """

    max_attempts: int = 5
    initial_backoff_s: float = 0.25
    max_backoff_s: float = 4.0
    multiplier: float = 2.0
    jitter: float = 0.2
    retryable: frozenset[grpc.StatusCode] = frozenset({grpc.StatusCode.UNAVAILABLE})

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_backoff_s < 0 or self.max_backoff_s < 0 or self.multiplier < 1 or not 0 <= self.jitter <= 1:
            raise ValueError("backoffs must be >= 0, multiplier >= 1 and jitter within [0, 1]")

    def backoff(self, attempt: int, server_hint: float | None = None) -> float:
        """Return the wait after failed attempt number ``attempt`` (1-based).

        Args:
            attempt: the attempt that just failed.
            server_hint: the delay the server asked for, if any; the wait is never shorter.

        Returns:
            Seconds to wait.
        """
        base = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (attempt - 1))
        # Jitter spreads the retries of many clients; it is not a security measure.
        wait = base * (1 + self.jitter * (2 * random.random() - 1))  # noqa: S311
        return max(wait, server_hint or 0.0)

    def should_retry(self, error: ChatmemError, attempt: int) -> bool:
        """Say whether a call whose attempt number ``attempt`` failed with ``error`` may be tried again."""
        return attempt < self.max_attempts and error.code in self.retryable


NO_RETRY = RetryPolicy(max_attempts=1)
"""A policy that never retries."""

DEFAULT_RETRY = RetryPolicy()
"""The default policy: up to 5 attempts on UNAVAILABLE, backing off from 0.25 s to 4 s."""


async def call_with_retry(
    attempt_fn: Callable[[float | None], Awaitable[T]], policy: RetryPolicy, timeout: float | None
) -> T:
    """Run one call with retries, all within one deadline.

    Args:
        attempt_fn: makes one attempt, given the seconds left until the deadline (None: no deadline).
        policy: the retry policy.
        timeout: the whole call's time budget in seconds, retries and waits included; None for none.

    Returns:
        The result of the first attempt that succeeds.

    Raises:
        ChatmemError: the mapped error of the last attempt.
    """
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    attempt = 1
    while True:
        remaining = None if deadline is None else max(0.0, deadline - loop.time())
        try:
            return await attempt_fn(remaining)
        except grpc.RpcError as exc:
            error = from_grpc_error(exc)
            if not policy.should_retry(error, attempt):
                raise error from exc
            wait = policy.backoff(attempt, error.retry_after)
            if deadline is not None and loop.time() + wait >= deadline:
                raise error from exc
            log.debug("attempt %d failed (%s); retrying in %.2fs", attempt, error, wait)
        await asyncio.sleep(wait)
        attempt += 1
