"""Ending an RPC with a domain error's rich status, keeping the trailing metadata already set (the request id)."""

from __future__ import annotations

import grpc
from grpc_status import rpc_status

from server.errors import ChatmemError


async def abort_with_error(context: grpc.aio.ServicerContext, exc: ChatmemError) -> None:
    """Abort the RPC with the error's google.rpc.Status; raises, as ``context.abort`` does.

    ``abort_with_status`` would replace the trailing metadata set earlier in the call (the request id
    echo) with the status's own, so the two are sent together.
    """
    status = rpc_status.to_status(exc.to_status())
    kept = tuple(context.trailing_metadata() or ())
    await context.abort(status.code, status.details, kept + tuple(status.trailing_metadata))
