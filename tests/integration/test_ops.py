"""Operations on a real server process: reflection v1 and v1alpha, Health/List, quiet stream cancels, and
``chatmem-server health`` (plaintext, TLS, mTLS, the health port, a stopped server)."""

from __future__ import annotations

import asyncio
import pathlib
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from chatmem.v1 import thread_memory_service_pb2 as pb
from chatmem.v1 import thread_memory_service_pb2_grpc as pb_grpc
from devtools.ports import free_port
from devtools.server import ServerProcess
from tests.conftest import make_settings, msg, start_harness
from tests.pki import CertificateAuthority

pytestmark = pytest.mark.integration

ROOT = pathlib.Path(__file__).resolve().parents[2]
SERVICES = {"chatmem.v1.ThreadMemoryService", "chatmem.v1.PreferencesService", "grpc.health.v1.Health"}


def server_env(tmp_path: pathlib.Path, **extra: str) -> dict[str, str]:
    return {"PYTHONPATH": str(ROOT), "DATABASE__SQLITE_PATH": str(tmp_path / "chatmem.db"), **extra}


@pytest.fixture
def server(tmp_path: pathlib.Path) -> Iterator[ServerProcess]:
    """A plaintext server on the embedded SQLite store."""
    proc = ServerProcess(server_env(tmp_path), str(tmp_path))
    proc.start()
    yield proc
    proc.stop()


async def ready(channel: grpc.aio.Channel) -> None:
    reply = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(), timeout=30, wait_for_ready=True
    )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture
async def channel(server: ServerProcess) -> AsyncIterator[grpc.aio.Channel]:
    ch = grpc.aio.insecure_channel(server.target)
    await ready(ch)
    yield ch
    await ch.close()


def error_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if re.search(r"\bERROR\b|Traceback", line)]


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
async def test_reflection_lists_the_services_on_v1_and_v1alpha(channel: grpc.aio.Channel, version: str) -> None:
    # The v1 and v1alpha messages are the same on the wire; only the service name differs.
    info = channel.stream_stream(
        f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    symbol = "chatmem.v1.ThreadMemoryService"
    asks = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=f"grpc.reflection.{version}.ServerReflection"),
    ]
    answers = [a async for a in info(iter(asks), timeout=10)]
    names = {s.name for s in answers[0].list_services_response.service}
    assert SERVICES | {"grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"} <= names
    for answer in answers[1:]:
        assert answer.WhichOneof("message_response") == "file_descriptor_response", answer


async def test_health_list_returns_every_status_without_logging_an_error(
    server: ServerProcess, channel: grpc.aio.Channel
) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for _ in range(3):
        listed = await stub.List(health_pb2.HealthListRequest(), timeout=5)
        statuses = {name: reply.status for name, reply in listed.statuses.items()}
        assert {"", *SERVICES - {"grpc.health.v1.Health"}} <= set(statuses)
        assert set(statuses.values()) == {health_pb2.HealthCheckResponse.SERVING}
    await asyncio.sleep(0.2)
    assert error_lines(server.log()) == []


async def test_a_cancelled_stream_logs_no_error(server: ServerProcess, channel: grpc.aio.Channel) -> None:
    stub = pb_grpc.ThreadMemoryServiceStub(channel)
    # Long enough that the server is still sending (held by flow control) when the client cancels.
    for start in range(0, 20_000, 100):
        batch = [msg(f"m{i} " + "x" * 1000) for i in range(start, start + 100)]
        await stub.AppendMessages(pb.AppendMessagesRequest(thread_id="long", messages=batch))

    async def read_then_cancel(pause_s: float) -> None:
        # The documented cancel-and-resume pattern: read a little, cancel, resume from the last seq.
        call = stub.StreamHistory(pb.StreamHistoryRequest(thread_id="long"))
        first = await call.read()
        assert isinstance(first, pb.StreamHistoryResponse) and first.messages
        await asyncio.sleep(pause_s)
        call.cancel()

    for pause_s in (0, 0.01, 0.1, 0.3) * 2:
        await asyncio.gather(*(read_then_cancel(pause_s) for _ in range(10)))
    resumed = stub.StreamHistory(pb.StreamHistoryRequest(thread_id="long", after_seq=19_990))
    assert [m.seq async for c in resumed for m in c.messages] == list(range(19_991, 20_001))
    await asyncio.sleep(0.5)
    assert error_lines(server.log()) == []


@pytest.mark.parametrize("user_id", ["", "u1"], ids=["messages", "with-preferences"])
async def test_get_context_max_chars_is_exact_at_the_boundary(channel: grpc.aio.Channel, user_id: str) -> None:
    from chatmem.v1 import preferences_service_pb2 as pp
    from chatmem.v1 import preferences_service_pb2_grpc as pp_grpc

    stub = pb_grpc.ThreadMemoryServiceStub(channel)
    await stub.AppendMessages(pb.AppendMessagesRequest(thread_id="ctx", messages=[msg("hello"), msg("how are you")]))
    if user_id:
        prefs = pp_grpc.PreferencesServiceStub(channel)
        await prefs.SetPreferences(pp.SetPreferencesRequest(user_id=user_id, preferences={"tone": "dry"}))
    request = pb.GetContextRequest(thread_id="ctx", user_id=user_id)
    whole = await stub.GetContext(request)
    n = len(whole.context)
    request.max_chars = n
    exact = await stub.GetContext(request)
    assert (exact.context, exact.message_count) == (whole.context, 2)
    request.max_chars = n - 1
    short = await stub.GetContext(request)
    assert len(short.context) <= n - 1 and short.message_count == 1


def health_command(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server", "health", *args], env=env, capture_output=True, text=True, timeout=30
    )


async def test_health_command_plaintext_and_stopped(server: ServerProcess, channel: grpc.aio.Channel) -> None:
    done = health_command(server.env)
    assert (done.returncode, done.stdout.strip()) == (0, "SERVING"), done.stderr
    wildcard = health_command({**server.env, "GRPC__ADDRESS": f"0.0.0.0:{server.port}"})
    assert (wildcard.returncode, wildcard.stdout.strip()) == (0, "SERVING"), wildcard.stderr
    assert health_command(server.env, "--no-such-flag").returncode == 2
    server.stop()
    stopped = health_command(server.env)
    assert (stopped.returncode, stopped.stdout.strip()) == (1, "NOT_SERVING"), stopped.stderr


async def test_health_command_dials_the_health_port(tmp_path: pathlib.Path) -> None:
    health_port = free_port()
    proc = ServerProcess(server_env(tmp_path, GRPC__HEALTH_ADDRESS=f"0.0.0.0:{health_port}"), str(tmp_path))
    proc.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{health_port}") as ch:
            await ready(ch)
        # The main listener's address is wrong on purpose: only the health port is dialled.
        done = health_command({**proc.env, "GRPC__ADDRESS": "127.0.0.1:1"})
        assert (done.returncode, done.stdout.strip()) == (0, "SERVING"), done.stderr
    finally:
        proc.stop()


@pytest.mark.parametrize("mtls", [False, True], ids=["tls", "mtls"])
async def test_health_command_over_tls(tmp_path: pathlib.Path, mtls: bool) -> None:
    ca = CertificateAuthority()
    (tmp_path / "ca.crt").write_bytes(ca.cert)
    cert, key = ca.issue("chatmem server", server=True).write(tmp_path, "server")
    client = ca.issue("chatmem probe", server=False)
    client_cert, client_key = client.write(tmp_path, "client")
    tls = {"GRPC__TLS_CERT_FILE": cert, "GRPC__TLS_KEY_FILE": key}
    if mtls:
        tls |= {"GRPC__TLS_CLIENT_CA_FILE": str(tmp_path / "ca.crt"), "GRPC__TLS_REQUIRE_CLIENT_AUTH": "true"}
    proc = ServerProcess(server_env(tmp_path, **tls), str(tmp_path))
    proc.start()
    try:
        creds = grpc.ssl_channel_credentials(ca.cert, client.key, client.cert)
        async with grpc.aio.secure_channel(proc.target, creds) as ch:
            await ready(ch)
        probe = {**proc.env, "GRPC__HEALTH_CHECK_CA_FILE": str(tmp_path / "ca.crt")}
        if mtls:
            without_cert = health_command(probe)
            assert (without_cert.returncode, without_cert.stdout.strip()) == (1, "NOT_SERVING")
            probe |= {"GRPC__HEALTH_CHECK_CERT_FILE": client_cert, "GRPC__HEALTH_CHECK_KEY_FILE": client_key}
        done = health_command(probe)
        assert (done.returncode, done.stdout.strip()) == (0, "SERVING"), done.stderr
        untrusted = health_command({**probe, "GRPC__HEALTH_CHECK_CA_FILE": ""})  # system roots: not our CA
        assert untrusted.returncode == 1
    finally:
        proc.stop()


async def test_health_list_reports_not_serving_once_shutdown_began() -> None:
    port = free_port()
    h = await start_harness(make_settings(grpc={"health_address": f"127.0.0.1:{port}"}))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            before = await stub.List(health_pb2.HealthListRequest(), timeout=5)
            assert {r.status for r in before.statuses.values()} == {health_pb2.HealthCheckResponse.SERVING}
            await h.app.health.enter_graceful_shutdown()
            after = await stub.List(health_pb2.HealthListRequest(), timeout=5)
            assert set(after.statuses) == set(before.statuses)
            assert {r.status for r in after.statuses.values()} == {health_pb2.HealthCheckResponse.NOT_SERVING}
            check = await stub.Check(health_pb2.HealthCheckRequest(service="chatmem.v1.ThreadMemoryService"))
            assert check.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        await h.close()
