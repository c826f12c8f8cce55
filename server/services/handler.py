"""The one wrapper every RPC goes through: deadline, bad bytes and domain errors to rich status, no leaked internals.

A client's deadline needs nothing here: when it passes, grpc cancels the handler's task and answers
DEADLINE_EXCEEDED itself. Only an RPC that came without one is bounded by the server's default
(``GRPC__DEFAULT_TIMEOUT_S``), so most RPCs carry no timer of their own.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from server.aborts import abort_with_error
from server.errors import ChatmemError, DeadlineExceededError, InternalError
from server.services.registry import REFUSES_UNDECODABLE, Undecodable

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")
S = TypeVar("S")


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
    """Wrap a unary handler: refuse undecodable bytes, bound it when the client set no deadline, map errors."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext) -> Resp:
        try:
            if isinstance(request, Undecodable):
                raise request.error()
            if context.time_remaining() is None:
                async with asyncio.timeout(self.default_timeout_s):
                    return await fn(self, request, context)
            return await fn(self, request, context)
        except (ChatmemError, TimeoutError) as exc:
            await _abort(context, exc, fn.__name__)
        except Exception as exc:  # noqa: BLE001 - report INTERNAL, never a stack trace, to the caller
            await _abort(context, exc, fn.__name__)
        raise AssertionError("abort returns only by raising")

    setattr(wrapper, REFUSES_UNDECODABLE, True)
    return wrapper


def server_stream(
    fn: Callable[[S, Req, grpc.aio.ServicerContext], AsyncIterator[Resp]],
) -> Callable[[S, Req, grpc.aio.ServicerContext], AsyncIterator[Resp]]:
    """Wrap a server-streaming handler: without a client deadline, each step is bounded by the default."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext) -> AsyncIterator[Resp]:
        if isinstance(request, Undecodable):
            await _abort(context, request.error(), fn.__name__)
        iterator = fn(self, request, context).__aiter__()
        bounded = context.time_remaining() is None
        try:
            while True:
                if bounded:
                    async with asyncio.timeout(self.default_stream_timeout_s):
                        try:
                            item = await iterator.__anext__()
                        except StopAsyncIteration:
                            return
                else:
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

    setattr(wrapper, REFUSES_UNDECODABLE, True)
    return wrapper
