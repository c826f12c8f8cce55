"""Auth pieces without a server: key format and hashing, JWT verification, the role table, limiter, layer."""

from __future__ import annotations

import contextlib
import importlib
import pkgutil
import time
from collections.abc import Sequence
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

import chatmem.v1
from chatmem.v1 import thread_memory_service_pb2
from server.auth import keys
from server.auth.authenticators import ApiKeyAuthenticator, JwtAuthenticator, bearer
from server.auth.layer import AuthLayer
from server.auth.limiter import FailureLimiter, peer_host
from server.auth.roles import METHOD_ROLES, AccessRole, required_role
from server.auth.tokens import JwtVerifier, TokenError
from server.config import AuthSettings
from server.errors import PermissionDeniedError, QuotaExceededError, UnauthenticatedError, UnavailableError
from server.interceptors import Call
from server.storage.apikeys import ApiKeyRecord
from server.storage.protocols import StoreUnavailableError
from tests.authkit import JWT_SECRET, make_jwt

# --- key format -----------------------------------------------------------------------------------


def test_generated_keys_parse_back_and_only_their_own_secret_matches() -> None:
    text, parts = keys.generate()
    other_text, other = keys.generate()
    assert text != other_text and parts.key_id != other.key_id
    assert text.startswith(f"cmk_{parts.key_id}_")
    assert keys.parse(text) == parts
    stored = keys.hash_secret(parts.secret)
    assert len(stored) == 32 and parts.secret.encode() not in stored
    assert keys.matches(parts.secret, stored)
    assert not keys.matches(other.secret, stored)


@pytest.mark.parametrize(
    "text",
    ["", "cmk_", "Bearer x", "cmk_0123456789abcdef_short", "cmx_0123456789abcdef_" + "a" * 43,
     "cmk_0123456789ABCDEF_" + "a" * 43, "cmk_0123456789abcdef_" + "a" * 44, "cmk_0123456789abcdef_" + "a" * 42 + "!"],
)  # fmt: skip
def test_malformed_keys_do_not_parse(text: str) -> None:
    assert keys.parse(text) is None


# --- role table -------------------------------------------------------------------------------------


def _chatmem_methods() -> list[str]:
    found = []
    for info in pkgutil.iter_modules(chatmem.v1.__path__):
        if info.name.endswith("_service_pb2"):
            module = importlib.import_module(f"chatmem.v1.{info.name}")
            for service in module.DESCRIPTOR.services_by_name.values():
                found += [f"/{service.full_name}/{m.name}" for m in service.methods]
    return found


def test_every_chatmem_rpc_has_an_explicit_role() -> None:
    methods = _chatmem_methods()
    assert len(methods) >= 12
    missing = [m for m in methods if m not in METHOD_ROLES]
    assert not missing, f"add these RPCs to server/auth/roles.py METHOD_ROLES: {missing}"


def test_roles_are_ordered_and_unknown_methods_need_admin() -> None:
    assert AccessRole.READ < AccessRole.WRITE < AccessRole.ADMIN
    assert required_role("/chatmem.v1.AdminService/DeleteUser") is AccessRole.ADMIN
    assert required_role("/chatmem.v1.NewService/Anything") is AccessRole.ADMIN
    assert required_role("/chatmem.v1.ThreadMemoryService/GetHistory") is AccessRole.READ
    assert required_role("/chatmem.v1.ThreadMemoryService/AppendMessages") is AccessRole.WRITE
    assert AccessRole.parse("Write") is AccessRole.WRITE
    assert AccessRole.parse("owner") is None and AccessRole.parse(3) is None


# --- JWT --------------------------------------------------------------------------------------------


def _hs(**kw: Any) -> JwtVerifier:
    return JwtVerifier(AuthSettings(mode="jwt", jwt_secret=JWT_SECRET, **kw))


def test_a_valid_hs256_token_gives_its_workspace_and_role() -> None:
    claims = _hs().verify(make_jwt("acme", "write"))
    assert (claims.workspace_id, claims.role, claims.subject) == ("acme", AccessRole.WRITE, "tester")


@pytest.mark.parametrize(
    ("token", "why"),
    [
        (make_jwt("acme", "read", exp_in_s=-3600), "ExpiredSignature"),
        (make_jwt("acme", "read", exp_in_s=None), "exp"),
        (make_jwt("acme", "read", key="another-secret-that-is-also-32-bytes-long"), "Signature"),
        (make_jwt(None, "read"), "workspace"),
        (make_jwt("", "read"), "workspace"),
        (make_jwt("acme", None), "role"),
        (make_jwt("acme", "superuser"), "role"),
        (make_jwt("acme", "read", aud="someone-else"), "Audience"),
        ("not.a.token", "Decode"),
    ],
)
def test_bad_tokens_are_refused(token: str, why: str) -> None:
    with pytest.raises(TokenError, match=why):
        _hs().verify(token)


def test_alg_none_is_refused() -> None:
    unsigned = jwt.encode({"workspace": "acme", "role": "admin", "exp": int(time.time()) + 600}, None, algorithm="none")
    with pytest.raises(TokenError):
        _hs().verify(unsigned)


def test_audience_and_issuer_are_checked_when_configured() -> None:
    v = _hs(jwt_audience="chatmem", jwt_issuer="https://idp.example")
    ok = make_jwt("acme", "read", aud="chatmem", iss="https://idp.example")
    assert v.verify(ok).workspace_id == "acme"
    for bad in (
        make_jwt("acme", "read", iss="https://idp.example"),
        make_jwt("acme", "read", aud="other", iss="https://idp.example"),
        make_jwt("acme", "read", aud="chatmem"),
        make_jwt("acme", "read", aud="chatmem", iss="https://evil.example"),
    ):
        with pytest.raises(TokenError):
            v.verify(bad)


def _public_pem(private: Any) -> bytes:
    return private.public_key().public_bytes(  # type: ignore[no-any-return]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.mark.parametrize("kind", ["RS256", "ES256"])
def test_public_key_tokens_verify_and_other_algorithms_are_refused(kind: str, tmp_path: Any) -> None:
    private = rsa.generate_private_key(65537, 2048) if kind == "RS256" else ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "pub.pem"
    path.write_bytes(_public_pem(private))
    v = JwtVerifier(AuthSettings(mode="jwt", jwt_public_key_file=str(path)))
    assert v.algorithm == kind
    assert v.verify(make_jwt("acme", "admin", key=private, algorithm=kind)).role is AccessRole.ADMIN
    with pytest.raises(TokenError):  # an HMAC token must not pass where a public key is configured
        v.verify(make_jwt("acme", "admin"))
    stranger = rsa.generate_private_key(65537, 2048) if kind == "RS256" else ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(TokenError):
        v.verify(make_jwt("acme", "admin", key=stranger, algorithm=kind))


def test_jwt_settings_need_exactly_one_strong_key() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        AuthSettings(mode="jwt")
    with pytest.raises(ValueError, match="32 bytes"):
        AuthSettings(mode="jwt", jwt_secret="short")


# --- limiter ----------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_limiter_trips_after_max_failures_and_recovers_after_the_window() -> None:
    clock = Clock()
    lim = FailureLimiter(3, 60.0, 100, clock)
    for _ in range(3):
        assert lim.retry_after("1.2.3.4") == 0
        lim.failed("1.2.3.4")
    clock.now += 10
    assert lim.retry_after("1.2.3.4") == pytest.approx(50.0)
    assert lim.retry_after("5.6.7.8") == 0  # other peers are not affected
    clock.now += 50
    assert lim.retry_after("1.2.3.4") == 0
    lim.failed("1.2.3.4")  # a new window starts
    assert lim.retry_after("1.2.3.4") == 0


def test_limiter_table_is_bounded() -> None:
    lim = FailureLimiter(1, 60.0, 50, Clock())
    for i in range(500):
        lim.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(lim) == 50
    assert lim.retry_after("10.0.1.243") > 0  # the newest are kept
    assert lim.retry_after("10.0.0.0") == 0


@pytest.mark.parametrize(
    ("peer", "host"),
    [("ipv4:127.0.0.1:5555", "127.0.0.1"), ("ipv6:[::1]:5555", "::1"), ("ipv6:%5B::1%5D:5555", "::1"),
     ("unix:/tmp/s", "unix:/tmp/s"), ("", "")],
)  # fmt: skip
def test_peer_host(peer: str, host: str) -> None:
    assert peer_host(peer) == host


# --- API key authenticator (an in-memory KeyStore fake) ---------------------------------------------


class MemoryKeys:
    def __init__(self) -> None:
        self.rows: dict[str, ApiKeyRecord] = {}
        self.lookups = 0
        self.down = False

    async def create_api_key(self, record: ApiKeyRecord) -> ApiKeyRecord:
        self.rows[record.key_id] = record
        return record

    async def get_api_key(self, key_id: str) -> ApiKeyRecord | None:
        self.lookups += 1
        if self.down:
            raise StoreUnavailableError("down")
        return self.rows.get(key_id)

    async def list_api_keys(self, workspace_id: str | None) -> Sequence[ApiKeyRecord]:
        return [r for r in self.rows.values() if workspace_id in (None, r.workspace_id)]

    async def revoke_api_key(self, key_id: str) -> bool:
        r = self.rows[key_id]
        self.rows[key_id] = ApiKeyRecord(r.key_id, r.workspace_id, r.role, r.name, r.secret_hash, 1, 2)
        return True


async def _new_key(store: MemoryKeys, ws: str = "acme", role: str = "write") -> str:
    text, p = keys.generate()
    await store.create_api_key(ApiKeyRecord(p.key_id, ws, role, "", keys.hash_secret(p.secret)))
    return text


async def test_api_keys_are_cached_for_key_cache_s_and_revocation_shows_after_it() -> None:
    store, clock = MemoryKeys(), Clock()
    auth = ApiKeyAuthenticator(store, 5.0, 100, clock)
    text = await _new_key(store)
    who = await auth.authenticate({"authorization": f"Bearer {text}"})
    assert (who.workspace_id, who.role) == ("acme", "write")
    assert (await auth.authenticate({"x-api-key": text})).workspace_id == "acme"
    assert store.lookups == 1
    await store.revoke_api_key(text.split("_")[1])
    clock.now += 4.9
    await auth.authenticate({"x-api-key": text})  # still cached: the documented revocation lag
    clock.now += 0.2
    with pytest.raises(UnauthenticatedError, match="revoked"):
        await auth.authenticate({"x-api-key": text})
    assert store.lookups == 2


async def test_bad_api_keys_are_unauthenticated_and_a_down_store_is_unavailable() -> None:
    store = MemoryKeys()
    auth = ApiKeyAuthenticator(store, 5.0, 100, Clock())
    text = await _new_key(store)
    wrong_secret = text[:-4] + ("AAAA" if not text.endswith("AAAA") else "BBBB")
    for md in ({}, {"x-api-key": "nonsense"}, {"x-api-key": wrong_secret}, {"authorization": f"Basic {text}"},
               {"x-api-key": keys.generate()[0]}):  # fmt: skip
        with pytest.raises(UnauthenticatedError):
            await auth.authenticate(md)
    store.down = True
    with pytest.raises(UnavailableError):
        await auth.authenticate({"x-api-key": await _new_key(store)})


def test_bearer_parsing() -> None:
    assert bearer({"authorization": "bearer abc"}) == "abc"
    assert bearer({}) is None
    with pytest.raises(UnauthenticatedError):
        bearer({"authorization": "Bearer "})


# --- the layer ----------------------------------------------------------------------------------------


class Ctx:
    def peer(self) -> str:
        return "ipv4:10.1.1.1:4000"


def _call(method: str, request: Any, metadata: dict[str, str]) -> Call:
    service, _, name = method[1:].partition("/")
    return Call(method, service, name, False, request, Ctx(), metadata)  # type: ignore[arg-type]


async def _enter(layer: AuthLayer, call: Call) -> None:
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(layer.around(call))


async def test_layer_binds_the_workspace_and_applies_the_role_table() -> None:
    verifier = JwtVerifier(AuthSettings(mode="jwt", jwt_secret=JWT_SECRET))
    layer = AuthLayer(JwtAuthenticator(verifier), FailureLimiter(2, 60, 10, Clock()))
    writer = {"authorization": f"Bearer {make_jwt('acme', 'write')}"}
    admin = {"authorization": f"Bearer {make_jwt('acme', 'admin')}"}
    req = thread_memory_service_pb2.GetThreadRequest(thread_id="t")
    call = _call("/chatmem.v1.ThreadMemoryService/GetThread", req, writer)
    await _enter(layer, call)
    assert req.workspace_id == "acme" and call.principal is not None and call.principal.role == "write"
    other = thread_memory_service_pb2.GetThreadRequest(workspace_id="globex", thread_id="t")
    with pytest.raises(PermissionDeniedError, match="globex"):
        await _enter(layer, _call("/chatmem.v1.ThreadMemoryService/GetThread", other, admin))
    for method in ("/chatmem.v1.AdminService/DeleteUser", "/chatmem.v1.Unlisted/Method"):
        with pytest.raises(PermissionDeniedError, match="admin"):
            await _enter(layer, _call(method, thread_memory_service_pb2.GetThreadRequest(), writer))
        await _enter(layer, _call(method, thread_memory_service_pb2.GetThreadRequest(), admin))


async def test_a_locked_out_peer_gets_in_only_with_a_credential_checked_locally() -> None:
    verifier = JwtVerifier(AuthSettings(mode="jwt", jwt_secret=JWT_SECRET))
    clock = Clock()
    layer = AuthLayer(JwtAuthenticator(verifier), FailureLimiter(2, 30, 10, clock))
    good = {"authorization": f"Bearer {make_jwt('acme', 'read')}"}
    bad = {"authorization": "Bearer not-a-token"}
    method = "/chatmem.v1.ThreadMemoryService/GetThread"
    for _ in range(2):
        with pytest.raises(UnauthenticatedError):
            await _enter(layer, _call(method, thread_memory_service_pb2.GetThreadRequest(), {}))
    for metadata in ({}, bad):  # locked out: a bad or missing credential is told to wait
        with pytest.raises(QuotaExceededError) as caught:
            await _enter(layer, _call(method, thread_memory_service_pb2.GetThreadRequest(), metadata))
        assert caught.value.retry_after_s == pytest.approx(30)
    # A valid JWT needs no lookup: another client behind the same address is not locked out.
    await _enter(layer, _call(method, thread_memory_service_pb2.GetThreadRequest(), good))
    clock.now += 30
    with pytest.raises(UnauthenticatedError):
        await _enter(layer, _call(method, thread_memory_service_pb2.GetThreadRequest(), bad))
    assert caught.value.retry_after_s == pytest.approx(30)
    clock.now += 30
    await _enter(layer, _call(method, thread_memory_service_pb2.GetThreadRequest(), good))
