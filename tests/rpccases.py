"""A request builder for every chatmem RPC (found by tests/rpcs.py from the descriptors), and a generic invoker.

A method without a builder fails ``case_builders_cover_every_rpc``: a new RPC must be added here, so the
isolation and role tests cover it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from chatmem.v1 import admin_service_pb2 as a
from chatmem.v1 import preferences_service_pb2 as p
from chatmem.v1 import resources_pb2
from chatmem.v1 import thread_memory_service_pb2 as t
from tests.rpcs import Rpc, chatmem_methods

# Builder(workspace_id, thread_id, user_id, tag) -> request; ``tag`` marks what this request writes.
Builder = Callable[[str, str, str, str], Any]
_T = "/chatmem.v1.ThreadMemoryService/"
_P = "/chatmem.v1.PreferencesService/"
_A = "/chatmem.v1.AdminService/"


def _rid() -> str:
    return uuid.uuid4().hex


BUILDERS: dict[str, Builder] = {
    f"{_T}AppendMessages": lambda ws, tid, uid, tag: t.AppendMessagesRequest(
        workspace_id=ws,
        thread_id=tid,
        user_id=uid,
        request_id=_rid(),
        messages=[resources_pb2.MessageInput(role=resources_pb2.ROLE_USER, content=f"{tag} appended")],
    ),
    f"{_T}GetHistory": lambda ws, tid, uid, tag: t.GetHistoryRequest(workspace_id=ws, thread_id=tid),
    f"{_T}ListMessages": lambda ws, tid, uid, tag: t.ListMessagesRequest(workspace_id=ws, thread_id=tid),
    f"{_T}StreamHistory": lambda ws, tid, uid, tag: t.StreamHistoryRequest(workspace_id=ws, thread_id=tid),
    f"{_T}GetContext": lambda ws, tid, uid, tag: t.GetContextRequest(workspace_id=ws, thread_id=tid, user_id=uid),
    f"{_T}GetThread": lambda ws, tid, uid, tag: t.GetThreadRequest(workspace_id=ws, thread_id=tid),
    f"{_T}ListThreads": lambda ws, tid, uid, tag: t.ListThreadsRequest(workspace_id=ws, user_id=uid),
    f"{_T}UpdateThread": lambda ws, tid, uid, tag: t.UpdateThreadRequest(
        workspace_id=ws, thread_id=tid, title=f"{tag} retitled", pinned=True, request_id=_rid()
    ),
    f"{_T}DeleteThread": lambda ws, tid, uid, tag: t.DeleteThreadRequest(
        workspace_id=ws, thread_id=tid, request_id=_rid()
    ),
    f"{_T}WatchThread": lambda ws, tid, uid, tag: t.WatchThreadRequest(workspace_id=ws, thread_id=tid),
    f"{_T}ForkThread": lambda ws, tid, uid, tag: t.ForkThreadRequest(
        workspace_id=ws, thread_id=tid, new_thread_id=f"{tid}-fork-{_rid()[:8]}", request_id=_rid()
    ),
    f"{_T}TruncateThread": lambda ws, tid, uid, tag: t.TruncateThreadRequest(
        workspace_id=ws, thread_id=tid, after_seq=1000, request_id=_rid()
    ),
    f"{_T}CompactThread": lambda ws, tid, uid, tag: t.CompactThreadRequest(
        workspace_id=ws,
        thread_id=tid,
        through_seq=1,
        summary=resources_pb2.MessageInput(role=resources_pb2.ROLE_SYSTEM, content=f"{tag} summary"),
        request_id=_rid(),
    ),
    f"{_P}GetPreferences": lambda ws, tid, uid, tag: p.GetPreferencesRequest(workspace_id=ws, user_id=uid),
    f"{_P}SetPreferences": lambda ws, tid, uid, tag: p.SetPreferencesRequest(
        workspace_id=ws, user_id=uid, preferences={"tone": f"{tag} set"}, request_id=_rid()
    ),
    f"{_P}DeletePreferences": lambda ws, tid, uid, tag: p.DeletePreferencesRequest(
        workspace_id=ws, user_id=uid, all=True, request_id=_rid()
    ),
    f"{_A}DeleteUser": lambda ws, tid, uid, tag: a.DeleteUserRequest(workspace_id=ws, user_id=uid),
}


# Streams that never end on their own: ``invoke`` reads their first response, or waits this long for one.
OPEN_ENDED = frozenset({f"{_T}WatchThread"})
OPEN_ENDED_WAIT_S = 1.0


def case_builders_cover_every_rpc() -> list[Rpc]:
    """Return every RPC, failing if one has no builder."""
    rpcs = chatmem_methods()
    missing = [r.path for r in rpcs if r.path not in BUILDERS]
    assert not missing, f"add request builders to tests/rpccases.py for: {missing}"
    return rpcs


async def invoke(
    channel: grpc.aio.Channel, rpc: Rpc, request: Any, metadata: Sequence[tuple[str, str]], deadline_s: float = 10.0
) -> list[Any]:
    """Call any chatmem RPC; return its responses (one for a unary RPC). Raises grpc.aio.AioRpcError.

    An open-ended stream (``OPEN_ENDED``) returns its first response, or none if it sends nothing within
    ``OPEN_ENDED_WAIT_S`` (it was admitted and is waiting for news: allowed and served); then it is cancelled.
    """
    resp = rpc.response_class
    if rpc.streaming:
        stream = channel.unary_stream(rpc.path, request_serializer=type(request).SerializeToString,
                                      response_deserializer=resp.FromString)  # fmt: skip
        if rpc.path in OPEN_ENDED:
            call = stream(request, metadata=tuple(metadata), timeout=deadline_s)
            try:
                first = await asyncio.wait_for(call.read(), OPEN_ENDED_WAIT_S)
            except TimeoutError:
                return []
            finally:
                call.cancel()
            return [] if first is grpc.aio.EOF else [first]
        return [item async for item in stream(request, metadata=tuple(metadata), timeout=deadline_s)]
    unary = channel.unary_unary(rpc.path, request_serializer=type(request).SerializeToString,
                                response_deserializer=resp.FromString)  # fmt: skip
    return [await unary(request, metadata=tuple(metadata), timeout=deadline_s)]


async def code_of(call: Any) -> grpc.StatusCode:
    """Await a call; return OK or the status code it failed with."""
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK
