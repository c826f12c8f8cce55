"""The client's retry policy: what it retries, how often, how long it waits, and that it keeps the deadline."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from chatmem import NO_RETRY, RetryPolicy
from chatmem._retry import call_with_retry
from chatmem.errors import InvalidArgumentError, UnavailableError


def unavailable(retry_after_ms: int | None = None) -> grpc.aio.AioRpcError:
    trailing = grpc.aio.Metadata()
    if retry_after_ms is not None:
        packed = any_pb2.Any()
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(retry_after_ms)
        packed.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        status = status_pb2.Status(code=grpc.StatusCode.UNAVAILABLE.value[0], message="down", details=[packed])
        trailing = grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
    return grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), trailing, "down")


class Flaky:
    """Fails with the given errors, then answers; records the time budget each attempt got."""

    def __init__(self, *failures: grpc.aio.AioRpcError) -> None:
        self.failures = list(failures)
        self.budgets: list[float | None] = []

    async def __call__(self, remaining: float | None) -> str:
        self.budgets.append(remaining)
        if self.failures:
            raise self.failures.pop(0)
        return "ok"


FAST = RetryPolicy(max_attempts=4, initial_backoff_s=0.001, max_backoff_s=0.004, jitter=0)


def test_backoff_grows_to_its_cap_and_honours_the_server_hint() -> None:
    policy = RetryPolicy(initial_backoff_s=0.25, max_backoff_s=1.0, multiplier=2, jitter=0)
    assert [policy.backoff(a) for a in (1, 2, 3, 4)] == [0.25, 0.5, 1.0, 1.0]
    assert policy.backoff(1, server_hint=3.0) == 3.0
    jittered = RetryPolicy(initial_backoff_s=1.0, jitter=0.2)
    assert all(0.8 <= jittered.backoff(1) <= 1.2 for _ in range(200))


@pytest.mark.parametrize(
    "kwargs", [{"max_attempts": 0}, {"initial_backoff_s": -1}, {"multiplier": 0.5}, {"jitter": 1.5}]
)
def test_nonsense_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must"):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


async def test_unavailable_is_retried_until_it_succeeds() -> None:
    attempt = Flaky(unavailable(), unavailable())
    assert await call_with_retry(attempt, FAST, timeout=5.0) == "ok"
    assert len(attempt.budgets) == 3
    budgets = [b for b in attempt.budgets if b is not None]
    assert budgets == sorted(budgets, reverse=True), "each attempt gets what is left of one deadline"


async def test_retries_stop_after_max_attempts_with_the_mapped_error() -> None:
    attempt = Flaky(*[unavailable() for _ in range(10)])
    with pytest.raises(UnavailableError) as caught:
        await call_with_retry(attempt, FAST, timeout=5.0)
    assert len(attempt.budgets) == 4
    assert isinstance(caught.value.__cause__, grpc.aio.AioRpcError)


async def test_other_codes_are_not_retried() -> None:
    bad = grpc.aio.AioRpcError(grpc.StatusCode.INVALID_ARGUMENT, grpc.aio.Metadata(), grpc.aio.Metadata(), "no")
    attempt = Flaky(bad)
    with pytest.raises(InvalidArgumentError):
        await call_with_retry(attempt, FAST, timeout=5.0)
    assert len(attempt.budgets) == 1


async def test_no_retry_policy_makes_one_attempt() -> None:
    attempt = Flaky(unavailable())
    with pytest.raises(UnavailableError):
        await call_with_retry(attempt, NO_RETRY, timeout=5.0)
    assert len(attempt.budgets) == 1


async def test_a_retry_that_would_end_after_the_deadline_is_not_started() -> None:
    # The server asks for 10 s and the call has 0.5 s: it fails at once instead of sleeping past its
    # deadline (a sleep would trip the outer 5 s bound).
    attempt = Flaky(unavailable(retry_after_ms=10_000))
    with pytest.raises(UnavailableError) as caught:
        async with asyncio.timeout(5):
            await call_with_retry(attempt, RetryPolicy(), timeout=0.5)
    assert caught.value.retry_after == 10.0
    assert len(attempt.budgets) == 1


async def test_without_a_timeout_attempts_get_no_deadline() -> None:
    attempt = Flaky(unavailable())
    assert await call_with_retry(attempt, FAST, timeout=None) == "ok"
    assert attempt.budgets == [None, None]
