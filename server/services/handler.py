"""The one wrapper every RPC goes through: deadline, domain errors to rich status, no leaked internals."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from server.aborts import abort_with_error
from server.errors import ChatmemError, DeadlineExceededError, InternalError

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")
S = TypeVar("S")


def time_budget(context: grpc.aio.ServicerContext, default_s: float) -> float:
    """Seconds this RPC may still spend: the client's deadline, else the server default."""
    remaining = context.time_remaining()
    return default_s if remaining is None else max(0.0, remaining)


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException, method: str) -> None:
    # Every outcome goes through abort_with_error, so that each status carries its ErrorInfo.
    if isinstance(exc, ChatmemError):
        await abort_with_error(context, exc)
    if isinstance(exc, TimeoutError):
        await abort_with_error(context, DeadlineExceededError("the deadline passed before the storage answered"))
    log.exception("unexpected error in %s", method, exc_info=exc)
    await abort_with_error(context, InternalError("internal error; see the server log"))


async def abort_error(context: grpc.aio.ServicerContext, exc: BaseException, method: str) -> None:
    """End the RPC with the status of ``exc``: a domain error's own, DEADLINE_EXCEEDED, else INTERNAL; never returns."""
    await _abort(context, exc, method)


def unary(
    fn: Callable[[S, Req, grpc.aio.ServicerContext], Awaitable[Resp]],
) -> Callable[[S, Req, grpc.aio.ServicerContext], Awaitable[Resp]]:
    """Wrap a unary handler: bound it by the RPC's time budget and map errors to statuses."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext) -> Resp:
        try:
            async with asyncio.timeout(time_budget(context, self.default_timeout_s)):
                return await fn(self, request, context)
        except (ChatmemError, TimeoutError) as exc:
            await _abort(context, exc, fn.__name__)
        except Exception as exc:  # noqa: BLE001 - report INTERNAL, never a stack trace, to the caller
            await _abort(context, exc, fn.__name__)
        raise AssertionError("abort returns only by raising")

    return wrapper


def server_stream(
    fn: Callable[[S, Req, grpc.aio.ServicerContext], AsyncIterator[Resp]],
) -> Callable[[S, Req, grpc.aio.ServicerContext], AsyncIterator[Resp]]:
    """Wrap a server-streaming handler: each step is bounded by the remaining time budget."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext) -> AsyncIterator[Resp]:
        iterator = fn(self, request, context).__aiter__()
        try:
            while True:
                async with asyncio.timeout(time_budget(context, self.default_stream_timeout_s)):
                    try:
                        item = await iterator.__anext__()
                    except StopAsyncIteration:
                        return
                yield item
        except (ChatmemError, TimeoutError) as exc:
            await _abort(context, exc, fn.__name__)
        except Exception as exc:  # noqa: BLE001 - report INTERNAL, never a stack trace, to the caller
            await _abort(context, exc, fn.__name__)
        finally:
            await iterator.aclose()  # type: ignore[attr-defined]

    return wrapper
