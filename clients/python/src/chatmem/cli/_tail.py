"""``chatmem threads watch``: ``tail -f`` for a thread, on ``MemoryClient.watch`` (WatchThread)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator
from typing import Any

from chatmem.cli._codec import message_line
from chatmem.cli._common import EXIT_ERROR, CliError, connect, wants_json
from chatmem.cli._threads import render
from chatmem.errors import NotFoundError
from chatmem.types import Message


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``watch`` to the ``threads`` subcommands."""
    p = sub.add_parser(
        "watch",
        parents=[common],
        help="print a thread's newest messages, then each new one as it arrives (tail -f)",
        description="Print the newest messages, then follow the thread until interrupted (or --count).",
    )
    p.add_argument("thread_id")
    p.add_argument("-n", "--lines", type=int, default=10, help="first print this many of the newest messages (10)")
    p.add_argument("--after-seq", type=int, default=None, help="instead, print every message after this seq")
    p.add_argument("--count", type=int, default=0, help="exit after printing this many messages (0: never)")
    p.set_defaults(run=watch)


async def _start(memory: Any, args: argparse.Namespace) -> tuple[list[Message], int]:
    """Return the messages to print first and the seq to follow from."""
    if args.after_seq is not None:
        return [], args.after_seq
    newest: list[Message] = []
    if args.lines > 0:
        async for page in memory.list_messages(args.thread_id, page_size=args.lines, reverse=True).pages():
            newest = list(reversed(page.items[: args.lines]))
            break
    if newest:
        return newest, newest[-1].seq
    try:
        return [], (await memory.get_thread(args.thread_id)).last_seq
    except NotFoundError:
        return [], 0  # a thread that does not exist yet: follow it from its first message


async def watch(args: argparse.Namespace) -> int:
    """Print messages as lines (or JSON Lines, as ``export`` writes them) until interrupted."""
    as_json = wants_json(args)
    printed = 0

    def emit(m: Message) -> bool:
        nonlocal printed
        sys.stdout.write(message_line(m) if as_json else render(m) + "\n")
        # Each line as it comes: a reader on a pipe (or a test) must not wait for a full buffer.
        sys.stdout.flush()
        printed += 1
        return bool(args.count) and printed >= args.count

    async with connect(args) as memory:
        follow = getattr(memory, "watch", None)
        if follow is None:
            raise CliError("this chatmem client has no watch(); upgrade the chatmem package", EXIT_ERROR)
        first, after = await _start(memory, args)
        for m in first:
            if emit(m):
                return 0
        stream: AsyncIterator[Message] = follow(args.thread_id, after_seq=after)
        async for m in stream:
            if emit(m):
                break
    return 0
