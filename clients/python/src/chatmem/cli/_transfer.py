"""``chatmem threads export`` and ``import``: a thread as JSON Lines and back, at flat memory, rerunnable."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from chatmem.cli._codec import LineError, input_from_json, message_line, parse_line
from chatmem.cli._common import EXIT_ERROR, EXIT_INVALID, CliError, connect, describe, plural, target_of, wants_json
from chatmem.cli._progress import Progress
from chatmem.errors import ChatmemError
from chatmem.types import MessageInput

MAX_BATCH_MESSAGES = 100
"""The server's default limit of messages per AppendMessages (LIMITS__MAX_MESSAGES_PER_APPEND)."""

MAX_BATCH_BYTES = 2 * 1024 * 1024
"""A batch closes before its lines pass this size, well under the server's 4 MiB default request limit."""


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``export`` and ``import`` to the ``threads`` subcommands."""
    p = sub.add_parser(
        "export",
        parents=[common],
        help="write a thread as JSON Lines, one message per line",
        description="Stream a thread of any length as JSON Lines (every field; bytes in base64) at flat memory.",
    )
    p.add_argument("thread_id")
    p.add_argument("-o", "--output", default="-", help="the file to write ('-', the default, is stdout)")
    p.add_argument("--after-seq", type=int, default=0, help="only the messages after this seq (to resume)")
    p.set_defaults(run=export)

    p = sub.add_parser(
        "import",
        parents=[common],
        help="append exported JSON Lines to a thread; a rerun stores nothing twice",
        description=(
            "Append the messages of a JSON Lines file (an export, or lines with at least a role) to a "
            "thread, in batches whose request ids derive from the thread and the source messages, so "
            "that a rerun or a resumed run with the same input and --batch-size stores nothing twice."
        ),
    )
    p.add_argument("thread_id", help="the thread to append to (created by the first batch)")
    p.add_argument("file", nargs="?", default="-", help="the JSON Lines to read ('-', the default, is stdin)")
    p.add_argument("--user", default="", help="the owner of the thread, if the import creates it")
    p.add_argument("--title", default="", help="the title of the thread, if the import creates it")
    p.add_argument(
        "--batch-size",
        type=int,
        default=MAX_BATCH_MESSAGES,
        choices=range(1, MAX_BATCH_MESSAGES + 1),
        metavar="1..100",
        help="messages per append (100); keep it the same when you rerun an import",
    )
    p.set_defaults(run=import_)


@contextlib.contextmanager
def _open(path: str, mode: str) -> Iterator[IO[bytes]]:
    if path == "-":
        yield sys.stdout.buffer if "w" in mode else sys.stdin.buffer
        return
    try:
        handle = open(path, mode)  # noqa: SIM115 - closed below; stdin/stdout must stay open
    except OSError as exc:
        raise CliError(f"cannot open {path}: {exc.strerror}", EXIT_ERROR) from None
    with handle:
        yield handle


async def export(args: argparse.Namespace) -> int:
    """Write every message of a thread (after ``--after-seq``) as one JSON object per line."""
    async with connect(args) as memory:
        # Asked first so that an unknown thread is NOT_FOUND (a stream of it is just empty), and for the total.
        thread = await memory.get_thread(args.thread_id)
        # The thread's length is the total only for a whole export; a resumed one counts without a total.
        progress = Progress("exported", thread.message_count if args.after_seq == 0 else None)
        with _open(args.output, "wb") as out:
            # stream_history reads keyset chunks and resumes by itself; nothing here holds more than a line.
            async for message in memory.stream_history(args.thread_id, after_seq=args.after_seq):
                out.write(message_line(message).encode())
                progress.add()
            out.flush()
        progress.done()
    return 0


@dataclass(frozen=True, slots=True)
class _Batch:
    """Consecutive input messages that go in one append, and the keys that name them."""

    messages: list[MessageInput]
    keys: list[str]
    lines: list[int]

    def locate(self, text: str) -> str:
        """Replace the server's ``messages[i]`` with the input line of message i."""
        return _INDEX.sub(lambda m: f"line {self.lines[int(m.group(1))]}", text)


_INDEX = re.compile(r"messages\[(\d+)\]")


def _key(obj: dict[str, Any], number: int) -> str:
    # An exported line names itself by where it came from; a hand-written one by its line number.
    if isinstance(obj.get("seq"), int) and obj.get("thread_id"):
        return f"{obj.get('workspace_id', '')}/{obj['thread_id']}/{obj['seq']}"
    return f"line {number}"


def batches(lines: Iterable[bytes], size: int, max_bytes: int = MAX_BATCH_BYTES) -> Iterator[_Batch]:
    """Group input lines into batches of at most ``size`` messages and about ``max_bytes`` bytes.

    The grouping depends only on the input and ``size``, so a rerun forms the same batches.

    Raises:
        LineError: a line that is not a message (blank lines are skipped).
    """
    messages: list[MessageInput] = []
    keys: list[str] = []
    numbers: list[int] = []
    held = 0
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        if messages and (len(messages) >= size or held + len(raw) > max_bytes):
            yield _Batch(messages, keys, numbers)
            messages, keys, numbers, held = [], [], [], 0
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            raise LineError(f"line {number}: not UTF-8") from None
        obj = parse_line(text, number)
        numbers.append(number)
        messages.append(input_from_json(obj, f"line {number}"))
        keys.append(_key(obj, number))
        held += len(raw)
    if messages:
        yield _Batch(messages, keys, numbers)


def request_id(workspace: str, thread_id: str, keys: list[str]) -> str:
    """Return the append's request id: a hash of the destination and of the batch's source messages.

    The destination is part of it so that one export imported into two threads makes two sets of ids.
    """
    digest = hashlib.sha256("\n".join([workspace, thread_id, *keys]).encode()).hexdigest()
    return f"import-{digest[:48]}"


async def import_(args: argparse.Namespace) -> int:
    """Append the messages of a JSON Lines input to a thread, in deterministic batches."""
    appended = replayed = 0
    last_seq = 0
    progress = Progress("imported")
    async with connect(args) as memory:
        with _open(args.file, "rb") as source:
            try:
                for batch in batches(source, args.batch_size):
                    rid = request_id(memory.workspace_id, args.thread_id, batch.keys)
                    try:
                        result = await memory.append_messages(
                            args.thread_id, batch.messages, user_id=args.user, title=args.title, request_id=rid
                        )
                    except ChatmemError as exc:
                        # The server names messages[i] of the batch; the user needs the line of the input.
                        message, code = describe(exc, target_of(args))
                        where = f"lines {batch.lines[0]}-{batch.lines[-1]}"
                        raise CliError(f"{where}: {batch.locate(message)}", code) from None
                    if result.replayed:
                        replayed += len(batch.messages)
                    else:
                        appended += len(batch.messages)
                    last_seq = result.seqs[-1]
                    progress.add(len(batch.messages))
            except LineError as exc:
                progress.done()
                done = appended + replayed
                stored = f"; the {plural(done, 'message')} before it are stored" if done else ""
                raise CliError(f"{exc}{stored}", EXIT_INVALID) from None
    progress.done()
    if wants_json(args):
        summary = {"thread_id": args.thread_id, "appended": appended, "replayed": replayed, "last_seq": last_seq}
        print(json.dumps(summary))
    else:
        print(f"imported {plural(appended, 'message')} into {args.thread_id!r} ({replayed} already there)")
    return 0
