"""TLS end to end: TLS and mTLS listeners, certificate reload without restart, the plaintext health port,
and the backends over TLS (rediss:// to a TLS redis-server, PostgreSQL with ssl=on and sslmode=verify-full)."""

from __future__ import annotations

import asyncio
import os
import pathlib
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chatmem import MemoryClient
from chatmem.v1 import resources_pb2
from chatmem.v1 import thread_memory_service_pb2 as t
from devtools.postgres import PostgresProcess
from devtools.redis import RedisProcess
from server.app import create_server
from server.storage.protocols import StoreUnavailableError
from tests.authkit import with_grpc
from tests.conftest import make_settings, start_harness
from tests.pki import CertificateAuthority, serial_of

pytestmark = pytest.mark.integration


@dataclass
class Pki:
    folder: pathlib.Path
    ca: CertificateAuthority
    ca_file: str
    server_cert: str
    server_key: str
    client_cert: bytes
    client_key: bytes
    client_files: tuple[str, str]
    stranger_cert: bytes
    stranger_key: bytes
    server_serial: int


@pytest.fixture
def pki(tmp_path: pathlib.Path) -> Pki:
    ca = CertificateAuthority()
    (tmp_path / "ca.crt").write_bytes(ca.cert)
    server = ca.issue("chatmem server", server=True)
    server_cert, server_key = server.write(tmp_path, "server")
    client = ca.issue("chatmem client", server=False)
    stranger = CertificateAuthority("another CA").issue("stranger", server=False)
    return Pki(tmp_path, ca, str(tmp_path / "ca.crt"), server_cert, server_key, client.cert, client.key,
               client.write(tmp_path, "client"), stranger.cert, stranger.key, serial_of(server.cert))  # fmt: skip


def _served_serial(port: int, ca_file: str) -> int:
    """Open a new TLS connection (ALPN h2, as gRPC) and return the serial of the certificate it is shown."""
    context = ssl.create_default_context(cafile=ca_file)
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as s,
    ):
        der = s.getpeercert(binary_form=True)
    assert der
    return serial_of(ssl.DER_cert_to_PEM_cert(der).encode())


async def _health(channel: grpc.aio.Channel) -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    return int(reply.status)


async def _code(call: object) -> grpc.StatusCode:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_tls_serves_the_api_refuses_plaintext_and_the_health_port_answers(pki: Pki) -> None:
    settings = with_grpc(
        make_settings(), tls_cert_file=pki.server_cert, tls_key_file=pki.server_key, health_address="127.0.0.1:0"
    )
    app = await create_server(settings)
    await app.start()
    target = f"127.0.0.1:{app.port}"
    try:
        ca = pki.ca.cert
        async with MemoryClient.connect(target, root_certificates=ca) as client:
            await client.append("t1", "user", "over TLS")
            assert [m["content"] for m in await client.get_history("t1")] == ["over TLS"]
        async with grpc.aio.insecure_channel(target) as plain:
            code = await _code(plain.unary_unary(
                "/chatmem.v1.ThreadMemoryService/GetHistory",
                request_serializer=t.GetHistoryRequest.SerializeToString,
                response_deserializer=t.GetHistoryResponse.FromString,
            )(t.GetHistoryRequest(thread_id="t1"), timeout=3))  # fmt: skip
            assert code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        assert app.health_port
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.health_port}") as probe:
            assert await _health(probe) == health_pb2.HealthCheckResponse.SERVING
            only_health = probe.unary_unary(
                "/chatmem.v1.ThreadMemoryService/GetHistory",
                request_serializer=t.GetHistoryRequest.SerializeToString,
                response_deserializer=t.GetHistoryResponse.FromString,
            )
            assert await _code(only_health(t.GetHistoryRequest(thread_id="t1"), timeout=5)) == (
                grpc.StatusCode.UNIMPLEMENTED
            )
    finally:
        await app.stop(grace_s=1.0)


async def test_mtls_requires_a_client_certificate_from_the_configured_ca(pki: Pki) -> None:
    settings = with_grpc(
        make_settings(),
        tls_cert_file=pki.server_cert,
        tls_key_file=pki.server_key,
        tls_client_ca_file=pki.ca_file,
        tls_require_client_auth=True,
    )
    h = await start_harness(settings)
    target = f"127.0.0.1:{h.app.port}"
    ca = pki.ca.cert
    try:
        async with MemoryClient.connect(
            target, root_certificates=ca, private_key=pki.client_key, certificate_chain=pki.client_cert
        ) as client:
            await client.append("t1", "user", "mutual")
            assert len(await client.get_history("t1")) == 1
        for creds in (
            grpc.ssl_channel_credentials(ca),  # no client certificate
            grpc.ssl_channel_credentials(ca, pki.stranger_key, pki.stranger_cert),  # one from another CA
        ):
            async with grpc.aio.secure_channel(target, creds) as channel:
                code = await _code(
                    health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
                )
                assert code == grpc.StatusCode.UNAVAILABLE
    finally:
        await h.close()


async def test_certificates_reload_without_a_restart(pki: Pki) -> None:
    settings = with_grpc(make_settings(), tls_cert_file=pki.server_cert, tls_key_file=pki.server_key)
    h = await start_harness(settings)
    port = h.app.port
    try:
        first = pki.server_serial
        assert await asyncio.to_thread(_served_serial, port, pki.ca_file) == first
        renewed = pki.ca.issue("chatmem server renewed", server=True)
        # Replace the files one at a time, as a certificate manager would: in between, the key does not
        # match the certificate and the server must keep the old pair.
        staged = pki.folder / "staged"
        staged.mkdir()
        new_cert, new_key = renewed.write(staged, "server")
        os.replace(new_cert, pki.server_cert)
        assert await asyncio.to_thread(_served_serial, port, pki.ca_file) == first
        os.replace(new_key, pki.server_key)
        served = first
        for _ in range(50):  # the next handshake should already see it; bounded anyway
            served = await asyncio.to_thread(_served_serial, port, pki.ca_file)
            if served != first:
                break
            await asyncio.sleep(0.1)
        assert served == serial_of(renewed.cert)
        ca = pki.ca.cert
        async with MemoryClient.connect(f"127.0.0.1:{port}", root_certificates=ca) as client:
            await client.append("t1", "user", "after reload")
            assert len(await client.get_history("t1")) == 1
    finally:
        await h.close()


@pytest.fixture
def tls_redis(pki: Pki) -> Iterator[RedisProcess]:
    proc = RedisProcess(tls=(pki.server_cert, pki.server_key, pki.ca_file), tls_client=pki.client_files)
    proc.start()
    yield proc
    proc.close()


async def test_rediss_with_a_ca_and_a_client_certificate(pki: Pki, tls_redis: RedisProcess) -> None:
    base = make_settings(redis_url=tls_redis.url)
    redis = base.redis.model_copy(
        update={"ssl_ca_file": pki.ca_file, "ssl_cert_file": pki.client_files[0], "ssl_key_file": pki.client_files[1]}
    )
    h = await start_harness(base.model_copy(update={"redis": redis}))
    try:
        assert tls_redis.url.startswith("rediss://") and h.app.repository.write_behind
        async with MemoryClient.connect(f"127.0.0.1:{h.app.port}") as client:
            await client.append("t1", "user", "via rediss")
        reply = await h.threads.GetHistory(t.GetHistoryRequest(thread_id="t1"), timeout=5)
        assert [m.content for m in reply.messages] == ["via rediss"]
        assert reply.serving.tier == resources_pb2.TIER_CACHE and not reply.serving.degraded
        await h.drained()
    finally:
        await h.close()


@pytest.fixture(scope="module")
def ssl_pg() -> Iterator[tuple[PostgresProcess, str, str]]:
    ca = CertificateAuthority()
    proc = PostgresProcess()
    issued = ca.issue("postgres", server=True)
    cert = proc.install_file("server.crt", issued.cert)
    key = proc.install_file("server.key", issued.key)
    ca_file = proc.install_file("ca.crt", ca.cert, 0o644)
    other_ca = proc.install_file("other-ca.crt", CertificateAuthority("not it").cert, 0o644)
    proc.extra_conf.update({"ssl": "on", "ssl_cert_file": cert, "ssl_key_file": key})
    proc.start()
    yield proc, ca_file, other_ca
    proc.close()


async def test_postgres_sslmode_verify_full_through_database_url(ssl_pg: tuple[PostgresProcess, str, str]) -> None:
    proc, ca_file, other_ca = ssl_pg
    url = f"{proc.url}?sslmode=verify-full&sslrootcert={ca_file}"
    h = await start_harness(make_settings(database_url=url))
    try:
        async with MemoryClient.connect(f"127.0.0.1:{h.app.port}") as client:
            await client.append("t1", "user", "via TLS to PostgreSQL")
            assert len(await client.get_history("t1")) == 1
        conn = await asyncpg.connect(proc.url, ssl=False)
        try:
            rows = await conn.fetch(
                "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
                "WHERE a.backend_type = 'client backend' AND a.pid <> pg_backend_pid()"
            )
        finally:
            await conn.close()
        assert rows and all(r["ssl"] for r in rows)  # every connection of the server's pool uses TLS
    finally:
        await h.close()
    with pytest.raises(StoreUnavailableError):
        await create_server(make_settings(database_url=f"{proc.url}?sslmode=verify-full&sslrootcert={other_ca}"))
