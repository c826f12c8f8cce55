"""Authentication end to end on a real server: API keys, JWTs, roles per RPC, revocation, the failed-attempt limiter."""

from __future__ import annotations

import asyncio
import pathlib
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import jwt
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from chatmem import MemoryClient, SyncMemoryClient
from chatmem.errors import PermissionDeniedError as ClientPermissionDenied
from server.auth.roles import AccessRole, required_role
from server.storage.apikeys import KeyStore
from tests.authkit import JWT_SECRET, bearer, create_key, make_jwt, with_auth
from tests.conftest import Harness, exchange, make_settings, start_harness
from tests.rpccases import BUILDERS, case_builders_cover_every_rpc, code_of, invoke

pytestmark = pytest.mark.integration


@pytest.fixture
async def keyed(tmp_path: pathlib.Path) -> AsyncIterator[Harness]:
    """A server in api_key mode on an SQLite file, with a short key cache and a lenient limiter."""
    settings = with_auth(
        make_settings(sqlite_path=str(tmp_path / "chatmem.db")), mode="api_key", key_cache_s=0.3, max_failures=1000
    )
    h = await start_harness(settings)
    yield h
    await h.close()


def _retry_delay_s(exc: grpc.aio.AioRpcError) -> float:
    raw = dict(exc.trailing_metadata() or ()).get("grpc-status-details-bin")
    assert raw, "no rich status"
    status = status_pb2.Status.FromString(raw)
    for detail in status.details:
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    raise AssertionError("no RetryInfo detail")


async def test_api_key_binds_the_workspace_and_refuses_missing_bad_and_foreign(keyed: Harness) -> None:
    key, _ = await create_key(keyed.app.store.keys, "acme", "write")
    other, _ = await create_key(keyed.app.store.keys, "globex", "admin")
    target = f"127.0.0.1:{keyed.app.port}"
    async with MemoryClient.connect(target, api_key=key) as client:
        await client.append("t1", "user", "question 1")  # empty workspace: the key's
    async with MemoryClient.connect(target, api_key=key, workspace_id="acme") as client:
        assert [m["content"] for m in await client.get_history("t1")] == ["question 1"]
    async with MemoryClient.connect(target, api_key=other, workspace_id="globex") as client:
        assert list(await client.get_history("t1")) == []
    async with MemoryClient.connect(target, api_key=key, workspace_id="globex") as client:
        with pytest.raises(ClientPermissionDenied):
            await client.get_history("t1")

    def blocking() -> int:
        with SyncMemoryClient.connect(target, metadata={"x-api-key": key}) as sync:
            return len(sync.get_history("t1"))

    assert await asyncio.to_thread(blocking) == 1

    get = keyed.threads.GetHistory
    from chatmem.v1 import thread_memory_service_pb2 as t

    req = t.GetHistoryRequest(thread_id="t1")
    assert await code_of(get(req)) == grpc.StatusCode.UNAUTHENTICATED
    assert await code_of(get(req, metadata=bearer("cmk_nonsense"))) == grpc.StatusCode.UNAUTHENTICATED
    assert await code_of(get(req, metadata=bearer(key[:-3] + "abc"))) == grpc.StatusCode.UNAUTHENTICATED
    assert await code_of(get(req, metadata=(("authorization", f"Basic {key}"),))) == grpc.StatusCode.UNAUTHENTICATED


async def test_health_stays_open_and_reflection_is_off_by_default_with_auth(keyed: Harness) -> None:
    health = health_pb2_grpc.HealthStub(keyed.channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(keyed.channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])):
            pass
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_a_revoked_key_is_refused_once_the_cache_time_passes(keyed: Harness) -> None:
    key, key_id = await create_key(keyed.app.store.keys, "acme", "read")
    from chatmem.v1 import thread_memory_service_pb2 as t

    req = t.GetHistoryRequest(thread_id="t1")
    assert await code_of(keyed.threads.GetHistory(req, metadata=bearer(key))) == grpc.StatusCode.OK
    store = keyed.app.store.keys
    assert isinstance(store, KeyStore)
    assert await store.revoke_api_key(key_id)
    assert not await store.revoke_api_key(key_id)  # already revoked
    deadline = time.monotonic() + 10
    code = grpc.StatusCode.OK
    for _ in range(200):  # AUTH__KEY_CACHE_S=0.3 here; bounded in count and time
        code = await code_of(keyed.threads.GetHistory(req, metadata=bearer(key)))
        if code != grpc.StatusCode.OK or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert code == grpc.StatusCode.UNAUTHENTICATED
    listed = await store.list_api_keys("acme")
    assert [(r.key_id, r.revoked) for r in listed] == [(key_id, True)]


async def test_roles_follow_the_table_for_every_rpc(keyed: Harness) -> None:
    creds = {role: (await create_key(keyed.app.store.keys, "acme", role.label))[0] for role in AccessRole}
    checked = 0
    for rpc in case_builders_cover_every_rpc():
        needed = required_role(rpc.path)
        for role, key in creds.items():
            request = BUILDERS[rpc.path]("", "t-roles", "u-roles", "roles")
            code = await code_of(invoke(keyed.channel, rpc, request, bearer(key)))
            if role < needed:
                assert code == grpc.StatusCode.PERMISSION_DENIED, (rpc.path, role)
            else:
                assert code not in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED), (
                    rpc.path,
                    role,
                )
            checked += 1
    assert checked >= 36


async def test_the_failed_attempt_limiter_trips_and_recovers(tmp_path: pathlib.Path) -> None:
    settings = with_auth(
        make_settings(sqlite_path=str(tmp_path / "c.db")), mode="api_key", max_failures=3, failure_window_s=1.0
    )
    h = await start_harness(settings)
    try:
        key, _ = await create_key(h.app.store.keys, "acme", "read")
        warm, _ = await create_key(h.app.store.keys, "acme", "read")
        from chatmem.v1 import thread_memory_service_pb2 as t

        req = t.GetThreadRequest(thread_id="t")
        assert await code_of(h.threads.GetThread(req, metadata=bearer(warm))) == grpc.StatusCode.NOT_FOUND
        for _ in range(3):
            assert (
                await code_of(h.threads.GetThread(req, metadata=bearer("cmk_bad"))) == grpc.StatusCode.UNAUTHENTICATED
            )
        # Locked out: a key that would need a store lookup is refused unchecked, even a good one...
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await h.threads.GetThread(req, metadata=bearer(key))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # ...while a key this server has just checked (in its key cache) still works from the address.
        assert await code_of(h.threads.GetThread(req, metadata=bearer(warm))) == grpc.StatusCode.NOT_FOUND
        assert 0 < _retry_delay_s(caught.value) <= 1.0
        code = grpc.StatusCode.RESOURCE_EXHAUSTED
        for _ in range(100):  # until the 1 s window has passed; bounded
            await asyncio.sleep(0.1)
            code = await code_of(h.threads.GetThread(req, metadata=bearer(key)))
            if code != grpc.StatusCode.RESOURCE_EXHAUSTED:
                break
        assert code == grpc.StatusCode.NOT_FOUND  # authenticated again; the thread just does not exist
    finally:
        await h.close()


@pytest.fixture
async def jwt_server(tmp_path: pathlib.Path) -> AsyncIterator[Harness]:
    settings = with_auth(
        make_settings(sqlite_path=str(tmp_path / "j.db")),
        mode="jwt",
        jwt_secret=JWT_SECRET,
        jwt_audience="chatmem",
        max_failures=1000,
    )
    h = await start_harness(settings)
    yield h
    await h.close()


async def test_jwt_mode_accepts_good_tokens_and_refuses_bad_ones(jwt_server: Harness) -> None:
    from chatmem.v1 import thread_memory_service_pb2 as t

    target = f"127.0.0.1:{jwt_server.app.port}"
    good = make_jwt("acme", "write", aud="chatmem")
    async with MemoryClient.connect(target, api_key=good) as client:
        await client.append("t1", "user", "hello")
        assert len(await client.get_history("t1")) == 1
    unsigned = jwt.encode({"workspace": "acme", "role": "admin", "aud": "chatmem", "exp": int(time.time()) + 60},
                          None, algorithm="none")  # fmt: skip
    bad: dict[str, Any] = {
        "expired": make_jwt("acme", "write", aud="chatmem", exp_in_s=-60),
        "wrong audience": make_jwt("acme", "write", aud="other"),
        "no audience": make_jwt("acme", "write"),
        "wrong signature": make_jwt("acme", "write", aud="chatmem", key="a-different-secret-of-at-least-32-bytes"),
        "alg none": unsigned,
        "no exp": make_jwt("acme", "write", aud="chatmem", exp_in_s=None),
        "an API key": "cmk_0123456789abcdef_" + "a" * 43,
    }
    req = t.GetHistoryRequest(workspace_id="acme", thread_id="t1")
    for why, token in bad.items():
        code = await code_of(jwt_server.threads.GetHistory(req, metadata=bearer(token)))
        assert code == grpc.StatusCode.UNAUTHENTICATED, why
    reader = make_jwt("acme", "read", aud="chatmem")
    append = t.AppendMessagesRequest(thread_id="t1", messages=exchange(2))
    assert await code_of(jwt_server.threads.AppendMessages(append, metadata=bearer(reader))) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
