"""Tenant isolation: with workspace A's credential, no chatmem RPC can read, list, change or delete workspace B's data.

For every RPC (found from the service descriptors; one without a case builder fails the test) and for a
request workspace_id of "", "A" and "B": "B" is PERMISSION_DENIED, "" and "A" act on A only. B's
threads and preferences use the SAME thread and user ids as A's, and are compared byte for byte
after every case and at the end.
"""

from __future__ import annotations

import pathlib
import uuid
from collections.abc import Sequence
from typing import Any

import grpc
import pytest

from chatmem.v1 import preferences_service_pb2 as p
from chatmem.v1 import resources_pb2
from chatmem.v1 import thread_memory_service_pb2 as t
from server.auth.roles import AccessRole, required_role
from tests.authkit import JWT_SECRET, bearer, create_key, make_jwt, with_auth
from tests.conftest import Harness, start_harness
from tests.integration.conftest import backend_settings
from tests.rpccases import BUILDERS, Rpc, case_builders_cover_every_rpc, invoke

pytestmark = pytest.mark.integration

TID, UID = "t-shared", "u-shared"
B_SECRET = b"B-secret"


def _strip(message: Any) -> bytes:
    # ``serving`` says which tier answered, which may differ between two reads of unchanged data.
    if "serving" in message.DESCRIPTOR.fields_by_name:
        message.ClearField("serving")
    return bytes(message.SerializeToString(deterministic=True))


async def _get(call: Any) -> bytes:
    try:
        return _strip(await call)
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.NOT_FOUND, exc
        return b"NOT_FOUND"


async def snapshot(h: Harness, ws: str, md: Sequence[tuple[str, str]]) -> list[bytes]:
    """Everything a workspace holds under the shared ids, as bytes."""
    md = tuple(md)
    return [
        await _get(h.threads.GetThread(t.GetThreadRequest(workspace_id=ws, thread_id=TID), metadata=md)),
        await _get(h.threads.ListMessages(t.ListMessagesRequest(workspace_id=ws, thread_id=TID), metadata=md)),
        await _get(h.threads.ListThreads(t.ListThreadsRequest(workspace_id=ws, user_id=UID), metadata=md)),
        await _get(h.prefs.GetPreferences(p.GetPreferencesRequest(workspace_id=ws, user_id=UID), metadata=md)),
    ]


async def seed(h: Harness, ws: str, md: Sequence[tuple[str, str]], mark: str) -> None:
    """(Re)create the workspace's thread and preferences under the shared ids, marked with ``mark``."""
    md = tuple(md)
    await h.threads.DeleteThread(t.DeleteThreadRequest(workspace_id=ws, thread_id=TID, allow_missing=True), metadata=md)
    messages = [
        resources_pb2.MessageInput(role=resources_pb2.ROLE_USER, content=f"{mark} question"),
        resources_pb2.MessageInput(role=resources_pb2.ROLE_ASSISTANT, content=f"{mark} answer"),
    ]
    await h.threads.AppendMessages(
        t.AppendMessagesRequest(workspace_id=ws, thread_id=TID, user_id=UID, title=f"{mark} title", messages=messages),
        metadata=md,
    )
    await h.prefs.DeletePreferences(p.DeletePreferencesRequest(workspace_id=ws, user_id=UID, all=True), metadata=md)
    await h.prefs.SetPreferences(
        p.SetPreferencesRequest(workspace_id=ws, user_id=UID, preferences={"tone": f"{mark} tone"}), metadata=md
    )


async def run_case(
    h: Harness, rpc: Rpc, named: str, a: str, a_md: Any, b: str, b_md: Any, b_before: list[bytes]
) -> None:
    """One cell of the matrix: A's credential, the request naming ``named``."""
    await seed(h, a, a_md, "A-mark")
    a_before = await snapshot(h, a, a_md)
    request = BUILDERS[rpc.path](named, TID, UID, "A-case")
    where = f"{rpc.path} workspace_id={named!r}"
    if named == b:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await invoke(h.channel, rpc, request, a_md)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED, where
        assert await snapshot(h, a, a_md) == a_before, where
    else:
        replies = await invoke(h.channel, rpc, request, a_md)
        body = b"".join(r.SerializeToString() for r in replies)
        assert B_SECRET not in body, f"{where} returned B's data"
        a_after = await snapshot(h, a, a_md)
        if required_role(rpc.path) >= AccessRole.WRITE:
            assert a_after != a_before, f"{where} did not act on A"
        else:
            assert b"A-mark" in body, f"{where} did not read A"
            assert a_after == a_before, where
    assert await snapshot(h, b, b_md) == b_before, f"{where} changed B"


MODES = [("api_key", "postgres+redis"), ("jwt", "postgres+redis"), ("api_key", "sqlite")]


@pytest.mark.parametrize(("mode", "backend"), MODES, ids=[f"{m}-{b}" for m, b in MODES])
async def test_a_credential_of_workspace_a_never_touches_workspace_b(
    request: pytest.FixtureRequest, tmp_path: pathlib.Path, mode: str, backend: str
) -> None:
    rpcs = case_builders_cover_every_rpc()
    base = backend_settings(request, backend, tmp_path)
    settings = (
        with_auth(base, mode="api_key", max_failures=1000)
        if mode == "api_key"
        else with_auth(base, mode="jwt", jwt_secret=JWT_SECRET, max_failures=1000)
    )
    h = await start_harness(settings)
    try:
        a, b = f"ws-a-{uuid.uuid4().hex[:8]}", f"ws-b-{uuid.uuid4().hex[:8]}"
        if mode == "api_key":
            a_cred, b_cred = (
                (await create_key(h.app.store.keys, a, "admin"))[0],
                (await create_key(h.app.store.keys, b, "admin"))[0],
            )
        else:
            a_cred, b_cred = make_jwt(a, "admin"), make_jwt(b, "admin")
        a_md, b_md = bearer(a_cred), bearer(b_cred)
        await seed(h, b, b_md, B_SECRET.decode())
        b_before = await snapshot(h, b, b_md)
        assert b_before[0] != b"NOT_FOUND" and B_SECRET in b"".join(b_before)
        cells = 0
        for rpc in rpcs:
            for named in ("", a, b):
                await run_case(h, rpc, named, a, a_md, b, b_md, b_before)
                cells += 1
        assert cells == 3 * len(rpcs) and len(rpcs) >= 12
        assert await snapshot(h, b, b_md) == b_before
        await h.drained()
        # And once more after write_behind flushed everything to the store.
        assert await snapshot(h, b, b_md) == b_before
    finally:
        await h.close()
