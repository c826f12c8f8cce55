"""The ``chatmem`` CLI as a subprocess against real servers: commands, errors, round trips, flat memory, progress."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import pty
import signal
import subprocess
import sys
import time
import uuid
from typing import Any

import pytest

from chatmem import (
    Envelope,
    Media,
    MemoryClient,
    MessageInput,
    Reasoning,
    TextPart,
    ToolCall,
    ToolResult,
)
from chatmem.v1 import resources_pb2
from chatmem.v1 import thread_memory_service_pb2 as t
from devtools.ports import free_port
from tests.authkit import create_key, with_auth, with_grpc
from tests.conftest import Harness, make_settings, start_harness
from tests.pki import CertificateAuthority

pytestmark = pytest.mark.integration

ROOT = pathlib.Path(__file__).resolve().parents[2]
# What the server assigns and so may differ between a thread and its imported copy.
ASSIGNED = ("workspace_id", "thread_id", "create_time")


def cli_env(target: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATMEM_")}
    return env | {"CHATMEM_TARGET": target, "PYTHONPATH": str(ROOT)} | extra


async def cli(
    target: str, *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None, wait_s: float = 120
) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chatmem.cli", *args, env=env or cli_env(target),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(stdin), wait_s)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def target_of(h: Harness) -> str:
    return f"127.0.0.1:{h.app.port}"


def rich(i: int) -> MessageInput:
    """A message that exercises one v2 feature or another, by i."""
    kind = i % 6
    if kind == 0:
        return MessageInput(role="user", content=f"question {i}: ünïcödé ✓\nsecond line", metadata={"n": str(i)})
    if kind == 1:
        call = ToolCall(f"call_{i}", "get_weather", '{"city": "Paris",  "unit":"C"}')
        return MessageInput(
            role="assistant",
            parts=(Reasoning(f"think {i}", bytes(range(256)), False), call),
            envelope=Envelope("openai.chat", b'{"role":"assistant","tool_calls":[]}  '),
            message_id=f"m-{i}",
            token_count=17,
        )
    if kind == 2:
        media = Media("image/png", data=b"\x89PNG\r\n\x1a\n\x00", size_bytes=9)
        result = ToolResult(f"call_{i - 1}", (TextPart("18C"), media), is_error=False)
        return MessageInput(role="tool", parts=(result,), name="get_weather", message_id=f"m-{i}")
    if kind == 3:
        return MessageInput(role="assistant", parts=(TextPart("It is "), TextPart("18C.")), token_count=4)
    if kind == 4:
        return MessageInput(role="system", parts=(Reasoning("", b"\x00redacted\xff", True), TextPart("be brief")))
    return MessageInput(role="developer", parts=(Media("audio/wav", uri="gs://bucket/a.wav", size_bytes=123),))


def lines_of(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def without(row: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in keys}


async def fill(h: Harness, ws: str, thread_id: str, messages: list[MessageInput]) -> None:
    async with MemoryClient.connect(target_of(h), workspace_id=ws) as memory:
        for i in range(0, len(messages), 100):
            await memory.append_messages(thread_id, messages[i : i + 100], user_id="ada", title="Source")


async def test_export_import_round_trip_into_another_workspace_is_identical(api: Harness) -> None:
    target, ws2 = target_of(api), f"{api.ws}-copy"
    await fill(api, api.ws, "src", [rich(i) for i in range(250)])

    code, exported, err = await cli(target, "threads", "export", "src", "--workspace", api.ws)
    assert code == 0, err
    assert err == "", "no progress output when stderr is not a terminal"
    source = lines_of(exported)
    assert [row["seq"] for row in source] == list(range(1, 251))
    assert source[1]["parts"][0]["reasoning"]["signature"] == "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+P0BBQkNERUZHSElKS0xNTk9QUVJTVFVWV1hZWltcXV5fYGFiY2RlZmdoaWprbG1ub3BxcnN0dXZ3eHl6e3x9fn+AgYKDhIWGh4iJiouMjY6PkJGSk5SVlpeYmZqbnJ2en6ChoqOkpaanqKmqq6ytrq+wsbKztLW2t7i5uru8vb6/wMHCw8TFxsfIycrLzM3Oz9DR0tPU1dbX2Nna29zd3t/g4eLj5OXm5+jp6uvs7e7v8PHy8/T19vf4+fr7/P3+/w=="  # fmt: skip
    assert source[0]["content"] == "question 0: ünïcödé ✓\nsecond line" and source[0]["metadata"] == {"n": "0"}

    code, out, err = await cli(
        target, "threads", "import", "copy", "--workspace", ws2, "--user", "bob", stdin=exported.encode()
    )
    assert code == 0, err
    assert out == "imported 250 messages into 'copy' (0 already there)\n"

    code, again, err = await cli(target, "threads", "export", "copy", "--workspace", ws2)
    assert code == 0, err
    copy = lines_of(again)
    # The definition of "identical": every field but those the server assigns (seq too when the source had gaps).
    assert [without(r, *ASSIGNED) for r in copy] == [without(r, *ASSIGNED) for r in source]
    assert {(r["workspace_id"], r["thread_id"]) for r in copy} == {(ws2, "copy")}

    # The typed client reads back the same objects: parts, envelopes and ids byte for byte.
    async with (
        MemoryClient.connect(target, workspace_id=api.ws) as a,
        MemoryClient.connect(target, workspace_id=ws2) as b,
    ):
        one = [m async for m in a.stream_history("src")]
        two = [m async for m in b.stream_history("copy")]
        assert [(m.parts, m.envelope, m.message_id, m.token_count, m.content) for m in two] == [
            (m.parts, m.envelope, m.message_id, m.token_count, m.content) for m in one
        ]
        thread = await b.get_thread("copy")
        assert (thread.user_id, thread.message_count) == ("bob", 250)

        code, out, err = await cli(
            target, "--json", "threads", "import", "copy", "--workspace", ws2, stdin=exported.encode()
        )
        assert code == 0, err
        assert json.loads(out) == {"thread_id": "copy", "appended": 0, "replayed": 250, "last_seq": 250}
        assert (await b.get_thread("copy")).message_count == 250, "a rerun stores nothing twice"


async def test_an_interrupted_import_resumed_with_the_same_input_stores_nothing_twice(
    sqlite_api: Harness, tmp_path: pathlib.Path
) -> None:
    target = target_of(sqlite_api)
    await fill(sqlite_api, sqlite_api.ws, "src", [rich(i) for i in range(250)])
    code, exported, _ = await cli(target, "threads", "export", "src", "--workspace", sqlite_api.ws)
    assert code == 0
    lines = exported.encode().splitlines(keepends=True)

    # Feed 150 lines and stop there: the first batch of 100 is appended, the second waits for more input.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chatmem.cli", "threads", "import", "dst", "--workspace", sqlite_api.ws,
        env=cli_env(target), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None
    proc.stdin.write(b"".join(lines[:150]))
    await proc.stdin.drain()
    async with MemoryClient.connect(target, workspace_id=sqlite_api.ws) as memory:
        deadline = time.monotonic() + 30
        while await memory.count("dst") < 100:
            assert time.monotonic() < deadline, "the first batch never arrived"
            await asyncio.sleep(0.05)
        proc.kill()  # interrupted mid-import
        await proc.wait()
        assert await memory.count("dst") == 100

        code, out, err = await cli(
            target, "threads", "import", "dst", "--workspace", sqlite_api.ws, stdin=exported.encode()
        )
        assert code == 0, err
        assert out == "imported 150 messages into 'dst' (100 already there)\n"
        assert await memory.count("dst") == 250
        copy = [m async for m in memory.stream_history("dst")]
        assert [m.message_id for m in copy] == [r["message_id"] for r in lines_of(exported)]
        assert [m.seq for m in copy] == list(range(1, 251))

    # An export cut short resumes with --after-seq, here into a file.
    rest = tmp_path / "rest.jsonl"
    code, out, err = await cli(
        target, "threads", "export", "dst", "--after-seq", "200", "-o", str(rest), "--workspace", sqlite_api.ws
    )
    assert (code, out, err) == (0, "", "")
    assert [row["seq"] for row in lines_of(rest.read_text())] == list(range(201, 251))


async def preload(h: Harness, thread_id: str, count: int) -> None:
    """Append ``count`` small messages fast: batches of 100, many appends in flight."""
    batches = asyncio.Queue[int]()
    for start in range(0, count, 100):
        batches.put_nowait(start)

    async def worker() -> None:
        while not batches.empty():
            start = batches.get_nowait()
            msgs = [resources_pb2.MessageInput(role=resources_pb2.ROLE_USER, content=f"message {start + i} " + "x" * 40)
                    for i in range(min(100, count - start))]  # fmt: skip
            req = t.AppendMessagesRequest(
                workspace_id=h.ws, thread_id=thread_id, messages=msgs, request_id=uuid.uuid4().hex
            )
            await h.threads.AppendMessages(req, timeout=60)

    await asyncio.gather(*(worker() for _ in range(16)))


# Linux keeps a process's peak RSS across exec, so a child forked from this (large) test process would report
# the test's peak: a small wrapper process forks the export and reports its children's peak instead.
MEASURE = (
    "import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(code)"
)


def _export_measured(target: str, ws: str, thread_id: str, out: pathlib.Path) -> tuple[int, int, str]:
    """Run an export to a file; return its exit code, its peak RSS in KiB and its stderr."""
    command = [sys.executable, "-m", "chatmem.cli", "threads", "export", thread_id, "--workspace", ws]
    with out.open("wb") as sink:
        done = subprocess.run([sys.executable, "-c", MEASURE, *command], env=cli_env(target), stdout=sink,
                              stderr=subprocess.PIPE, check=False, timeout=300)  # fmt: skip
    *err, peak = done.stderr.decode().splitlines()
    return done.returncode, int(peak), "\n".join(err)


async def test_a_100000_message_export_runs_at_flat_memory(tmp_path: pathlib.Path) -> None:
    h = await start_harness(make_settings(sqlite_path=str(tmp_path / "big.db")))
    try:
        started = time.monotonic()
        await preload(h, "small", 1_000)
        await preload(h, "big", 100_000)
        loaded = time.monotonic() - started
        target = target_of(h)
        code, small_kib, err = await asyncio.to_thread(
            _export_measured, target, h.ws, "small", tmp_path / "small.jsonl"
        )
        assert code == 0, err
        code, big_kib, err = await asyncio.to_thread(_export_measured, target, h.ws, "big", tmp_path / "big.jsonl")
        assert code == 0, err
    finally:
        await h.close()
    print(f"preload {loaded:.1f} s; export peak RSS: 1,000 messages {small_kib / 1024:.1f} MiB, "
          f"100,000 messages {big_kib / 1024:.1f} MiB")  # fmt: skip
    with (tmp_path / "big.jsonl").open("rb") as f:
        count = sum(1 for _ in f)
    assert count == 100_000
    last = json.loads((tmp_path / "big.jsonl").read_bytes().splitlines()[-1])
    assert last["seq"] == 100_000
    assert big_kib - small_kib < 20 * 1024, (small_kib, big_kib)


async def _run_on_pty(*args: str, env: dict[str, str], stdin: bytes | None = None) -> tuple[int, bytes, bytes]:
    """Run the CLI with stderr on a pseudo-terminal; return the exit code, stdout and what the terminal got."""
    master, slave = pty.openpty()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "chatmem.cli", *args, env=env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=slave,
        )  # fmt: skip
    finally:
        os.close(slave)
    out, _ = await asyncio.wait_for(proc.communicate(stdin), 60)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child side is closed and everything is read
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    assert proc.returncode is not None
    return proc.returncode, out, seen


async def test_progress_is_shown_on_a_terminal_and_never_on_a_pipe(sqlite_api: Harness) -> None:
    target = target_of(sqlite_api)
    await preload(sqlite_api, "long", 3_000)
    env = cli_env(target, CHATMEM_WORKSPACE=sqlite_api.ws)

    code, piped, err = await cli(target, "threads", "export", "long", env=env)
    assert code == 0 and err == ""
    code, out, terminal = await _run_on_pty("threads", "export", "long", env=env)
    assert code == 0
    assert out == piped.encode(), "progress goes to stderr only"
    assert b"\rexported 3,000/3,000 messages (100%)" in terminal and terminal.endswith(b"\n")

    code, _, err = await cli(target, "threads", "import", "copy", stdin=piped.encode(), env=env)
    assert code == 0 and err == ""
    code, out, terminal = await _run_on_pty("threads", "import", "copy2", env=env, stdin=piped.encode())
    assert code == 0 and out == b"imported 3000 messages into 'copy2' (0 already there)\n"
    assert b"\rimported 3,000 messages" in terminal


async def test_threads_commands_print_for_humans_and_json_for_scripts(sqlite_api: Harness) -> None:
    target = target_of(sqlite_api)
    env = cli_env(target, CHATMEM_WORKSPACE=sqlite_api.ws)
    await fill(sqlite_api, sqlite_api.ws, "t1", [rich(i) for i in range(4)])
    async with MemoryClient.connect(target, workspace_id=sqlite_api.ws) as memory:
        await memory.append("t0", "user", "older", user_id="ada", title="Zero")

    code, out, _ = await cli(target, "threads", "ls", "--user", "ada", env=env)
    assert (code, out) == (0, "t0  1 message  Zero\nt1  4 messages  Source\n"), "newest first"
    code, out, _ = await cli(target, "threads", "ls", "--user", "ada", "--json", "--limit", "1", env=env)
    assert code == 0 and len(out.splitlines()) == 1 and json.loads(out)["user_id"] == "ada"

    code, out, _ = await cli(target, "threads", "show", "t1", "-n", "2", env=env)
    assert code == 0
    head, _, tail = out.partition("\n\n")
    assert head.splitlines()[:4] == ["thread: t1", "user: ada", "title: Source", "messages: 4 (last seq 4)"]
    assert tail == "3 tool: [tool result id=call_1: 18C]\n4 assistant: It is 18C.\n"
    code, out, _ = await cli(target, "--json", "threads", "show", "t1", "-n", "1", env=env)
    doc = json.loads(out)
    assert doc["thread"]["message_count"] == 4 and [m["seq"] for m in doc["messages"]] == [4]

    code, out, _ = await cli(target, "threads", "fork", "t1", "t2", "--through-seq", "2", env=env)
    assert (code, out) == (0, "forked 't1' into 't2' (2 messages)\n")
    code, out, _ = await cli(target, "threads", "truncate", "t1", "--after-seq", "1", env=env)
    assert (code, out) == (0, "removed 3 messages from 't1'; 1 message left\n")
    code, out, _ = await cli(target, "--json", "threads", "truncate", "t1", "--after-seq", "0", env=env)
    assert code == 0 and json.loads(out)["removed_count"] == 1 and json.loads(out)["thread"]["last_seq"] == 4
    code, out, _ = await cli(target, "threads", "rm", "t2", env=env)
    assert (code, out) == (0, "deleted 't2' (2 stored messages)\n")
    code, out, err = await cli(target, "threads", "rm", "t2", env=env)
    assert (code, out, err) == (3, "", "chatmem: thread 't2' not found\n")
    code, out, _ = await cli(target, "threads", "rm", "t2", "--missing-ok", env=env)
    assert (code, out) == (0, "deleted 't2' (0 stored messages)\n")


async def test_prefs_get_set_rm(sqlite_api: Harness) -> None:
    target = target_of(sqlite_api)
    env = cli_env(target, CHATMEM_WORKSPACE=sqlite_api.ws)
    assert await cli(target, "prefs", "set", "ada", "tone=brief", "language=English", "note=a=b", env=env) == (
        0, "set 3 preferences of 'ada'\n", "")  # fmt: skip
    assert await cli(target, "prefs", "get", "ada", env=env) == (0, "language=English\nnote=a=b\ntone=brief\n", "")
    code, out, _ = await cli(target, "prefs", "get", "ada", "tone", "--json", env=env)
    assert (code, json.loads(out)) == (0, {"tone": "brief"})
    assert await cli(target, "prefs", "rm", "ada", "tone", env=env) == (0, "deleted 1 preference of 'ada'\n", "")
    assert await cli(target, "prefs", "rm", "ada", "--all", env=env) == (0, "deleted 2 preferences of 'ada'\n", "")
    assert await cli(target, "prefs", "get", "ada", env=env) == (0, "", "")
    code, _, err = await cli(target, "prefs", "set", "ada", "novalue", env=env)
    assert (code, err) == (2, "chatmem: expected KEY=VALUE, got 'novalue'\n")
    code, _, err = await cli(target, "prefs", "rm", "ada", env=env)
    assert (code, err) == (2, "chatmem: give the keys to delete, or --all (not both)\n")


async def test_errors_are_one_line_on_stderr_with_distinct_exit_codes(sqlite_api: Harness) -> None:
    target = target_of(sqlite_api)
    env = cli_env(target, CHATMEM_WORKSPACE=sqlite_api.ws)
    async with MemoryClient.connect(target, workspace_id=sqlite_api.ws) as memory:
        await memory.append("here", "user", "hi")
        await memory.append("there", "user", "hi")

    cases = [
        (("threads", "show", "nope"), 3, "chatmem: thread 'nope' not found"),
        (("threads", "export", "nope"), 3, "chatmem: thread 'nope' not found"),
        (("threads", "show", "bad id"), 4, "chatmem: invalid argument: thread_id: may hold only"),
        (("threads", "fork", "here", "there"), 7, "chatmem: "),
        (("threads", "truncate", "here", "--after-seq", "0", "--expected-last-seq", "9"), 7, "chatmem: "),
        (("threads", "show"), 2, "usage: chatmem threads show"),
        (("threads", "frobnicate"), 2, "usage: chatmem threads"),
        (("--api-key", "secret", "threads", "ls", "--user", "u"), 2, "usage: chatmem"),
        (("threads", "show", "x", "--cert-file", "/nonexistent"), 1, "chatmem: cannot read the client certificate"),
    ]
    for args, want_code, want_err in cases:
        code, out, err = await cli(target, *args, env=env)
        assert (code, out) == (want_code, ""), (args, code, err)
        assert err.startswith(want_err) or want_err in err, (args, err)
        assert "Traceback" not in err
        if want_code != 2:
            assert len(err.splitlines()) == 1, (args, err)

    code, _, err = await cli(
        target, "threads", "import", "dst", stdin=b'{"role": "user", "content": "ok"}\n\n[1]\n', env=env
    )
    assert (code, err) == (4, "chatmem: line 3: must be a JSON object\n")
    code, _, err = await cli(
        target, "threads", "import", "dst2", stdin=b'{"role": "user", "parts": [{"text": 1}]}\n', env=env
    )
    assert (code, err) == (4, "chatmem: line 1: parts[0].text must be a string\n")
    # A line the server refuses is named by its line number, not by its index in the batch.
    good = b'{"role": "user", "content": "fine"}\n'
    bad = b'{"role": "user", "content": "x", "name": "' + b"n" * 300 + b'"}\n'
    code, _, err = await cli(target, "threads", "import", "dst3", stdin=good * 2 + b"\n" + bad, env=env)
    assert code == 4 and err.startswith("chatmem: lines 1-4: invalid argument: line 4.name: "), err

    down = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    code, out, err = await cli(down, "threads", "ls", "--user", "u", "--timeout", "1")
    assert code == 5 and err.startswith(f"chatmem: cannot reach the server at {down}") and len(err.splitlines()) == 1
    assert time.monotonic() - started < 30


async def test_the_credential_comes_from_the_environment(tmp_path: pathlib.Path) -> None:
    settings = with_auth(make_settings(sqlite_path=str(tmp_path / "auth.db")), mode="api_key", key_cache_s=0)
    h = await start_harness(settings)
    try:
        key, _ = await create_key(h.app.store.keys, "acme", "write")
        reader, _ = await create_key(h.app.store.keys, "acme", "read")
        target = target_of(h)
        code, out, err = await cli(target, "prefs", "set", "ada", "tone=brief")
        assert code == 6 and err.startswith("chatmem: not authenticated") and "CHATMEM_API_KEY" in err
        code, out, err = await cli(
            target, "prefs", "set", "ada", "tone=brief", env=cli_env(target, CHATMEM_API_KEY=key)
        )
        assert (code, out) == (0, "set 1 preference of 'ada'\n"), err
        code, out, err = await cli(target, "prefs", "set", "ada", "x=y", env=cli_env(target, CHATMEM_API_KEY=reader))
        assert code == 6 and err.startswith("chatmem: permission denied"), err
        code, out, err = await cli(target, "prefs", "get", "ada", env=cli_env(target, CHATMEM_API_KEY=reader))
        assert (code, out) == (0, "tone=brief\n"), err
    finally:
        await h.close()


async def test_tls_with_a_private_ca_and_mtls(tmp_path: pathlib.Path) -> None:
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
        target = f"localhost:{h.app.port}"
        code, out, err = await cli(
            target, "prefs", "set", "ada", "tone=brief",
            "--ca-file", str(tmp_path / "ca.crt"), "--cert-file", client_cert, "--key-file", client_key,
        )  # fmt: skip
        assert (code, out) == (0, "set 1 preference of 'ada'\n"), err
        env = cli_env(target, CHATMEM_CA_FILE=str(tmp_path / "ca.crt"), CHATMEM_CERT_FILE=client_cert,
                      CHATMEM_KEY_FILE=client_key)  # fmt: skip
        assert await cli(target, "prefs", "get", "ada", env=env) == (0, "tone=brief\n", "")
        code, _, err = await cli(target, "prefs", "get", "ada", "--ca-file", str(tmp_path / "ca.crt"), "--timeout", "2")
        assert code == 5 and err.startswith("chatmem: cannot reach"), "without a client certificate mTLS fails"
        code, _, err = await cli(target, "prefs", "get", "ada", "--timeout", "2")
        assert code == 5, "a plaintext client cannot talk to a TLS server"
        code, _, err = await cli(target, "prefs", "get", "ada", "--cert-file", client_cert)
        assert (code, err) == (2, "chatmem: --cert-file and --key-file go together (a client certificate for mTLS)\n")
    finally:
        await h.close()


async def test_export_into_a_closed_pipe_ends_quietly(sqlite_api: Harness) -> None:
    await preload(sqlite_api, "long", 5_000)
    env = cli_env(target_of(sqlite_api), CHATMEM_WORKSPACE=sqlite_api.ws)
    proc = await asyncio.create_subprocess_shell(
        f"{sys.executable} -m chatmem.cli threads export long | head -n 1",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert json.loads(out)["seq"] == 1
    assert err == b""


@pytest.mark.skipif(
    not hasattr(MemoryClient, "watch"),
    reason="needs MemoryClient.watch (WatchThread, chatmem/_watch.py, built on another branch of issue #15)",
)
async def test_watch_prints_existing_and_new_messages_as_they_arrive(sqlite_api: Harness) -> None:
    target = target_of(sqlite_api)
    async with MemoryClient.connect(target, workspace_id=sqlite_api.ws) as memory:
        for i in range(3):
            await memory.append("live", "user", f"before {i}")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "chatmem.cli", "threads", "watch", "live", "-n", "2",
            env=cli_env(target, CHATMEM_WORKSPACE=sqlite_api.ws),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None
        try:

            async def line() -> str:
                return (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()  # type: ignore[union-attr]

            assert [await line(), await line()] == ["2 user: before 1\n", "3 user: before 2\n"]
            await memory.append("live", "assistant", "new one")
            assert await line() == "4 assistant: new one\n"
            await memory.append_messages("live", [rich(1), rich(3)])
            assert (
                await line()
                == '5 assistant: [reasoning] [tool call get_weather id=call_1: {"city": "Paris",  "unit":"C"}]\n'
            )
            assert await line() == "6 assistant: It is 18C.\n"
            proc.send_signal(signal.SIGINT)  # Ctrl-C: the shell's code for it, and no traceback
            assert await asyncio.wait_for(proc.wait(), 30) == 130
            assert proc.stderr is not None and await proc.stderr.read() == b""
        finally:
            if proc.returncode is None:
                proc.terminate()
                await proc.wait()

        code, out, err = await cli(
            target, "--json", "threads", "watch", "live", "--after-seq", "4", "--count", "2",
            env=cli_env(target, CHATMEM_WORKSPACE=sqlite_api.ws), wait_s=30,
        )  # fmt: skip
        assert code == 0, err
        assert [row["seq"] for row in lines_of(out)] == [5, 6]
        assert lines_of(out)[0]["message_id"] == "m-1"

        # Deleting the thread ends the watch: exit code 3 and one line, like any NOT_FOUND.
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "chatmem.cli", "threads", "watch", "live", "-n", "1",
            env=cli_env(target, CHATMEM_WORKSPACE=sqlite_api.ws),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None and proc.stderr is not None
        assert (await asyncio.wait_for(proc.stdout.readline(), 30)).startswith(b"6 assistant")
        await memory.delete_thread("live")
        assert await asyncio.wait_for(proc.wait(), 30) == 3
        err = (await proc.stderr.read()).decode()
        assert err.startswith("chatmem: ") and len(err.splitlines()) == 1 and "not found" in err, err
