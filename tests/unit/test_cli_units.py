"""The CLI's pure parts: the JSON Lines codec, import batching and request ids, options, exit codes, progress."""

from __future__ import annotations

import datetime
import io
import json

import grpc
import pytest

from chatmem import Envelope, Media, Message, MessageInput, Reasoning, TextPart, ToolCall, ToolResult
from chatmem.cli import EXIT_AUTH, EXIT_CONFLICT, EXIT_INVALID, EXIT_NOT_FOUND, EXIT_UNAVAILABLE, build_parser
from chatmem.cli._codec import LineError, input_from_json, message_line, parse_line
from chatmem.cli._common import connect_options, describe
from chatmem.cli._progress import Progress
from chatmem.cli._transfer import batches, request_id
from chatmem.errors import from_grpc_error

PARTS = (
    Reasoning("hmm", b"\x00\xffsig", True),
    ToolCall("c1", "f", '{"a":  1}'),
    ToolResult("c1", (TextPart("ok"), Media("image/png", data=b"\x89PNG")), is_error=True),
    Media("audio/wav", uri="gs://b/a.wav", size_bytes=5),
    TextPart("done ✓"),
)


def stored(**kw: object) -> Message:
    base: dict[str, object] = {
        "seq": 7, "role": "assistant", "content": "done ✓", "name": "bot", "metadata": {"k": "v"},
        "create_time": datetime.datetime(2026, 12, 2, 15, 0, 1, 5, tzinfo=datetime.UTC), "thread_id": "t",
        "workspace_id": "ws", "parts": PARTS, "envelope": Envelope("anthropic", b'{"x": 1}\n'),
        "message_id": "m1", "token_count": 9,
    }  # fmt: skip
    return Message(**(base | kw))  # type: ignore[arg-type]


def test_an_exported_line_reads_back_as_the_input_that_made_it() -> None:
    line = message_line(stored())
    assert line.endswith("\n") and "\n" not in line[:-1]
    obj = parse_line(line, 1)
    assert obj["create_time"] == "2026-12-02T15:00:01.000005Z"
    assert obj["envelope"] == {"format": "anthropic", "raw": "eyJ4IjogMX0K"}
    back = input_from_json(obj, "line 1")
    assert back == MessageInput(
        role="assistant", content="done ✓", name="bot", metadata={"k": "v"}, parts=PARTS,
        envelope=Envelope("anthropic", b'{"x": 1}\n'), message_id="m1", token_count=9,
    )  # fmt: skip
    assert input_from_json(parse_line(message_line(stored(envelope=None, parts=())), 1), "x").envelope is None


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("not json", "line 3: not JSON"),
        ("[1]", "line 3: must be a JSON object"),
        ('{"content": "x"}', "role must be one of"),
        ('{"role": "user", "token_count": true}', "token_count must be a int"),
        ('{"role": "user", "metadata": {"a": 1}}', "metadata must map strings to strings"),
        ('{"role": "user", "parts": [{"text": "a", "media": {}}]}', "exactly one of"),
        ('{"role": "user", "parts": [{"video": {}}]}', "unknown kind 'video'"),
        ('{"role": "user", "parts": [{"media": {"data": "!!"}}]}', "data is not base64"),
        ('{"role": "tool", "parts": [{"tool_result": {"parts": [{"tool_call": {}}]}}]}', "only text and media"),
    ],
)
def test_a_line_that_is_not_a_message_is_refused_by_number(line: str, problem: str) -> None:
    with pytest.raises(LineError, match=problem.replace("[", r"\[")):
        input_from_json(parse_line(line, 3), "line 3")


def exported(seq: int, thread: str = "src") -> bytes:
    return json.dumps({"seq": seq, "thread_id": thread, "workspace_id": "w", "role": "user", "content": "x"}).encode()


def test_batches_and_their_request_ids_are_the_same_on_a_rerun() -> None:
    lines = [exported(i) + b"\n" for i in range(1, 251)]
    first = list(batches(lines, 100))
    assert [len(b.messages) for b in first] == [100, 100, 50]
    assert first[2].lines == list(range(201, 251))
    ids = [request_id("ws", "dst", b.keys) for b in first]
    assert ids == [request_id("ws", "dst", b.keys) for b in batches(lines, 100)]
    assert len(set(ids)) == 3 and all(len(i) <= 128 for i in ids)
    # Another destination, or another source, gets other ids: a replay never answers for a different import.
    assert request_id("ws", "other", first[0].keys) != ids[0]
    assert request_id("ws2", "dst", first[0].keys) != ids[0]
    other = next(batches([exported(i, "src2") + b"\n" for i in range(1, 101)], 100))
    assert request_id("ws", "dst", other.keys) != ids[0]
    # Hand-written lines are named by their line numbers.
    assert next(batches([b'{"role": "user"}\n'], 100)).keys == ["line 1"]


def test_a_batch_closes_before_it_passes_the_byte_limit_and_names_lines() -> None:
    lines = [exported(i) + b"\n" for i in range(1, 11)]
    sizes = [len(b.messages) for b in batches(lines, 100, max_bytes=len(lines[0]) * 3)]
    assert sizes == [3, 3, 3, 1]
    batch = next(batches([b"\n", *lines], 100))
    assert batch.lines[0] == 2
    assert batch.locate("messages[0].name: too long; messages[3].role") == "line 2.name: too long; line 5.role"


def test_connect_options_come_from_flags_then_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATMEM_TARGET", "env:1")
    monkeypatch.setenv("CHATMEM_WORKSPACE", "envws")
    monkeypatch.setenv("CHATMEM_API_KEY", "cmk_secret")
    args = build_parser().parse_args(["threads", "ls", "--user", "u"])
    target, opts = connect_options(args)
    assert (target, opts["workspace_id"], opts["api_key"], opts["tls"]) == ("env:1", "envws", "cmk_secret", False)
    # Before or after the command, a flag wins over the environment.
    for argv in (["--target", "a:1", "--workspace", "w", "threads", "ls", "--user", "u"],
                 ["threads", "ls", "--user", "u", "--target", "a:1", "--workspace", "w"]):  # fmt: skip
        target, opts = connect_options(build_parser().parse_args(argv))
        assert (target, opts["workspace_id"]) == ("a:1", "w")
    assert build_parser().parse_args(["threads", "show", "t", "--json"]).json is True
    assert build_parser().parse_args(["--json", "threads", "show", "t"]).json is True


class _Failed(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[()]:
        return ()


@pytest.mark.parametrize(
    ("code", "exit_code", "starts"),
    [
        (grpc.StatusCode.NOT_FOUND, EXIT_NOT_FOUND, "thread 'x' not found"),
        (grpc.StatusCode.INVALID_ARGUMENT, EXIT_INVALID, "thread 'x' not found"),
        (grpc.StatusCode.UNAVAILABLE, EXIT_UNAVAILABLE, "cannot reach the server at h:1"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, EXIT_UNAVAILABLE, "no answer from h:1 in time"),
        (grpc.StatusCode.UNAUTHENTICATED, EXIT_AUTH, "not authenticated"),
        (grpc.StatusCode.PERMISSION_DENIED, EXIT_AUTH, "permission denied"),
        (grpc.StatusCode.ALREADY_EXISTS, EXIT_CONFLICT, "thread 'x' not found"),
        (grpc.StatusCode.FAILED_PRECONDITION, EXIT_CONFLICT, "thread 'x' not found"),
        (grpc.StatusCode.INTERNAL, 1, "server error: "),
    ],
)
def test_each_kind_of_failure_has_its_exit_code(code: grpc.StatusCode, exit_code: int, starts: str) -> None:
    message, got = describe(from_grpc_error(_Failed(code, "thread 'x' not found")), "h:1")
    assert got == exit_code and message.startswith(starts) and "\n" not in message


def test_progress_draws_only_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    pipe, tty = io.StringIO(), Tty()
    for stream in (pipe, tty):
        p = Progress("exported", 2000, stream=stream, interval=0)
        p.add(1000)
        p.add(1000)
        p.done()
    assert pipe.getvalue() == ""
    assert tty.getvalue().startswith("\rexported 1,000/2,000 messages (50%)")
    assert tty.getvalue().endswith("\rexported 2,000/2,000 messages (100%)\x1b[K\n")
