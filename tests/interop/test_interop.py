"""The three clients against one server: a thread written by Node, read by Go and streamed by Python; the
same validation failure and reason in each language; API-key auth and mutual TLS from each."""

from __future__ import annotations

import json
import pathlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from chatmem import NO_RETRY, ChatmemError, MemoryClient
from tests.authkit import create_key, with_auth, with_grpc
from tests.conftest import Harness, make_settings, start_harness
from tests.pki import CertificateAuthority
from tests.polyglot import go_interop, node

pytestmark = pytest.mark.integration


async def ts(h: Harness, env: dict[str, str], *args: str) -> Any:
    code, out = await node(["dist/interop/cli.js", *args], {"CHATMEM_TARGET": f"127.0.0.1:{h.app.port}", **env})
    assert code == 0, out
    return json.loads(out)


async def golang(h: Harness, env: dict[str, str], *args: str) -> Any:
    code, out = await go_interop(list(args), {"CHATMEM_TARGET": f"127.0.0.1:{h.app.port}", **env})
    assert code == 0, out
    return json.loads(out)


@pytest.fixture
async def server(tmp_path: pathlib.Path) -> AsyncIterator[Harness]:
    h = await start_harness(make_settings(sqlite_path=str(tmp_path / "chatmem.db")))
    yield h
    await h.close()


async def test_node_appends_go_reads_the_window_python_streams_the_thread(server: Harness) -> None:
    env = {"CHATMEM_WORKSPACE": server.ws}
    appended = await ts(server, env, "append", "shared", "40")
    assert appended["seqs"] == [str(i) for i in range(1, 81)]
    window = await golang(server, env, "window", "shared")
    # The window is the last MEMORY__MAX_THREAD_MESSAGES (50) messages, oldest first.
    assert [m["seq"] for m in window] == list(range(31, 81))
    assert window[0]["content"] == "question 15 from node" and window[-1]["content"] == "answer 39 from node"
    async with MemoryClient.connect(f"127.0.0.1:{server.app.port}", workspace_id=server.ws) as memory:
        streamed = [m async for m in memory.stream_history("shared", chunk_size=7)]
    assert [m.seq for m in streamed] == list(range(1, 81))
    assert streamed[0].content == "question 0 from node" and streamed[-1].role == "assistant"


async def test_each_client_reads_the_same_fields_and_reason_of_a_validation_error(server: Harness) -> None:
    env = {"CHATMEM_WORKSPACE": server.ws}
    async with MemoryClient.connect(f"127.0.0.1:{server.app.port}", workspace_id=server.ws, retry=NO_RETRY) as memory:
        with pytest.raises(ChatmemError) as caught:
            await memory.append_messages("bad id!", [], user_id="no spaces")
    error = caught.value
    python = {
        "code": error.code.value[0],
        "reason": error.reason,
        "domain": error.domain,
        "fields": error.fields,  # type: ignore[attr-defined]
        "request_id": bool(error.request_id),
        "message": error.message,
    }
    expected = {
        "code": grpc.StatusCode.INVALID_ARGUMENT.value[0],
        "reason": "INVALID_ARGUMENT",
        "domain": "chatmem.dev",
        "fields": ["thread_id", "user_id", "messages"],
        "request_id": True,
        "message": "invalid thread_id: may hold only letters, digits and _ - . : @, and must start with a letter or digit (and 2 more)",
    }
    assert python == expected
    assert await ts(server, env, "invalid") == expected
    assert await golang(server, env, "invalid") == expected
    missing = {"code": grpc.StatusCode.NOT_FOUND.value[0], "reason": "THREAD_NOT_FOUND", "domain": "chatmem.dev"}
    for reader in (ts, golang):
        got = await reader(server, env, "missing", "nobody")
        assert {k: got[k] for k in missing} == missing, reader.__name__


async def test_api_key_auth_from_each_language(tmp_path: pathlib.Path) -> None:
    settings = with_auth(make_settings(sqlite_path=str(tmp_path / "db")), mode="api_key", max_failures=1000)
    h = await start_harness(settings)
    try:
        workspace = f"acme-{uuid.uuid4().hex[:6]}"
        key, _ = await create_key(h.app.store.keys, workspace, "write")
        keyed = {"CHATMEM_API_KEY": key}  # no workspace named: the credential's applies
        assert (await ts(h, keyed, "append", "from-node", "2"))["seqs"] == ["1", "2", "3", "4"]
        assert (await golang(h, keyed, "append", "from-go", "1"))["seqs"] == ["1", "2"]
        assert [m["seq"] for m in await golang(h, keyed, "window", "from-node")] == [1, 2, 3, 4]
        assert [m["content"] for m in await ts(h, keyed, "window", "from-go")] == [
            "question 0 from go",
            "answer 0 from go",
        ]
        async with MemoryClient.connect(f"127.0.0.1:{h.app.port}", api_key=key) as memory:
            assert len([m async for m in memory.stream_history("from-node")]) == 4
            assert (await memory.get_thread("from-go")).workspace_id == workspace
        # Without the key, each language gets UNAUTHENTICATED with the same reason.
        for reader in (ts, golang):
            got = await reader(h, {}, "missing", "from-node")
            assert (got["code"], got["reason"]) == (grpc.StatusCode.UNAUTHENTICATED.value[0], "UNAUTHENTICATED")
        async with MemoryClient.connect(f"127.0.0.1:{h.app.port}", retry=NO_RETRY) as anonymous:
            with pytest.raises(ChatmemError) as caught:
                await anonymous.get_thread("from-node")
        assert caught.value.reason == "UNAUTHENTICATED"
    finally:
        await h.close()


async def test_mutual_tls_from_each_language(tmp_path: pathlib.Path) -> None:
    ca = CertificateAuthority()
    (tmp_path / "ca.crt").write_bytes(ca.cert)
    server_cert, server_key = ca.issue("chatmem server", server=True).write(tmp_path, "server")
    client_cert, client_key = ca.issue("chatmem client", server=False).write(tmp_path, "client")
    settings = with_grpc(
        make_settings(),
        tls_cert_file=server_cert,
        tls_key_file=server_key,
        tls_client_ca_file=str(tmp_path / "ca.crt"),
        tls_require_client_auth=True,
    )
    h = await start_harness(settings)
    try:
        trusted = {"CHATMEM_WORKSPACE": h.ws, "CHATMEM_CA": str(tmp_path / "ca.crt")}
        mutual = {**trusted, "CHATMEM_CERT": client_cert, "CHATMEM_KEY": client_key}
        assert (await ts(h, mutual, "append", "over-tls", "1"))["seqs"] == ["1", "2"]
        assert [m["content"] for m in await golang(h, mutual, "window", "over-tls")] == [
            "question 0 from node",
            "answer 0 from node",
        ]
        # Without a client certificate the handshake fails: a transport error, with no server reason.
        for reader in (ts, golang):
            got = await reader(h, trusted, "history", "over-tls")
            assert got["code"] == grpc.StatusCode.UNAVAILABLE.value[0] and got["reason"] == "", (reader.__name__, got)
    finally:
        await h.close()
