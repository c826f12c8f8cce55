"""The README's TypeScript and Go quickstarts and its reflection commands run as written against a real server."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shlex
import sys
from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import descriptor_pool

import chatmem.v1.admin_service_pb2
import chatmem.v1.preferences_service_pb2
import chatmem.v1.thread_memory_service_pb2  # noqa: F401 - registers the services in the default pool
from chatmem.v1 import thread_memory_service_pb2, thread_memory_service_pb2_grpc
from devtools import golang
from tests.conftest import Harness, make_settings, start_harness
from tests.polyglot import ROOT, go, node, run

pytestmark = pytest.mark.integration

README = (ROOT / "README.md").read_text()
TARGET = "127.0.0.1:50051"


def block(language: str) -> tuple[str, str]:
    found = re.findall(rf"```{language}\n(.*?)```\n\nIt prints:\n\n```text\n(.*?)```", README, re.S)
    assert len(found) == 1, f"the README shows one {language} quickstart with its output"
    return found[0]


@pytest.fixture
async def server(tmp_path: pathlib.Path) -> AsyncIterator[Harness]:
    h = await start_harness(make_settings(sqlite_path=str(tmp_path / "chatmem.db")))
    yield h
    await h.close()


async def test_typescript_quickstart_prints_what_the_readme_shows(server: Harness) -> None:
    code, expected = block("js")
    assert TARGET in code
    program = code.replace(TARGET, f"127.0.0.1:{server.app.port}")
    # Run from inside the package, so that "@chatmem/client" resolves to it as for an installed one.
    status, out = await node(["--input-type=module", "-e", program])
    assert (status, out) == (0, expected)


async def test_go_quickstart_prints_what_the_readme_shows(server: Harness) -> None:
    code, expected = block("go")
    assert TARGET in code
    where = golang.GOPATH / "src" / "chatmem-quickstart"
    where.mkdir(parents=True, exist_ok=True)
    (where / "main.go").write_text(code.replace(TARGET, f"127.0.0.1:{server.app.port}"))
    built = golang.GOPATH / "bin" / "chatmem-quickstart"
    status, out = await go(["build", "-o", str(built), str(where / "main.go")])
    assert status == 0, out
    status, out = await run([str(built)], ROOT, dict(os.environ))
    assert (status, out) == (0, expected)


def reflection_commands() -> list[list[str]]:
    lines = [line for line in README.splitlines() if line.startswith(".venv/bin/buf curl ")]
    return [shlex.split(line) for line in lines]


async def test_the_reflection_commands_work_as_documented(server: Harness) -> None:
    commands = reflection_commands()
    assert len(commands) == 3
    outputs = []
    for argv in commands:
        argv = [str(pathlib.Path(sys.executable).parent / "buf"), *argv[1:]]
        argv = [a.replace(f"http://{TARGET}", f"http://127.0.0.1:{server.app.port}") for a in argv]
        status, out = await run(argv, ROOT, dict(os.environ))
        assert status == 0, out
        outputs.append(out)
    assert "chatmem.v1.ThreadMemoryService/StreamHistory" in outputs[0].splitlines()
    assert json.loads(outputs[1])["seqs"] == ["1"]  # int64 as a JSON string, as proto3 JSON maps it
    assert [m["content"] for m in json.loads(outputs[2])["messages"]] == ["hello"]


async def test_service_config_names_real_services_and_a_channel_accepts_it(server: Harness) -> None:
    text = (ROOT / "clients" / "service_config.json").read_text()
    config = json.loads(text)
    pool = descriptor_pool.Default()
    names = [name for method in config["methodConfig"] for name in method["name"]]
    assert {n["service"] for n in names} == {
        "chatmem.v1.ThreadMemoryService",
        "chatmem.v1.PreferencesService",
        "chatmem.v1.AdminService",
    }
    for name in names:
        service = pool.FindServiceByName(name["service"])
        if "method" in name:
            assert service.FindMethodByName(name["method"]) is not None, name
    first = config["methodConfig"][0]
    assert first["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"] and first["timeout"] == "10s"
    # gRPC itself parses it: a channel with it as the default service config makes calls.
    options = [("grpc.service_config", text), ("grpc.enable_retries", 1)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.app.port}", options=options) as channel:
        stub = thread_memory_service_pb2_grpc.ThreadMemoryServiceStub(channel)
        reply = await stub.GetHistory(thread_memory_service_pb2.GetHistoryRequest(thread_id="t"))
    assert list(reply.messages) == []
