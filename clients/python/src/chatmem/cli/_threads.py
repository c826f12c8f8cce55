"""``chatmem threads ls|show|fork|truncate|rm``: look at threads and reshape them."""

from __future__ import annotations

import argparse
import json
from typing import Any

from chatmem.cli._codec import message_to_json, thread_to_json
from chatmem.cli._common import connect, plural, wants_json
from chatmem.types import Media, Message, Part, Reasoning, TextPart, Thread, ToolCall, ToolResult


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``ls``, ``show``, ``fork``, ``truncate`` and ``rm`` to the ``threads`` subcommands."""
    p = sub.add_parser("ls", parents=[common], help="list a user's threads, newest first")
    p.add_argument("--user", required=True, help="the user whose threads to list")
    p.add_argument("--limit", type=int, default=0, help="at most this many threads (0: all)")
    p.set_defaults(run=ls)

    p = sub.add_parser("show", parents=[common], help="a thread's metadata and its newest messages")
    p.add_argument("thread_id")
    p.add_argument("-n", "--messages", type=int, default=10, help="how many of the newest messages (10; 0: none)")
    p.set_defaults(run=show)

    p = sub.add_parser("fork", parents=[common], help="copy a thread, or its prefix, into a new thread")
    p.add_argument("thread_id", help="the source thread")
    p.add_argument("new_thread_id", help="the new thread; it must not exist")
    p.add_argument("--through-seq", type=int, default=None, help="copy the messages up to this seq (default: all)")
    p.add_argument("--user", default="", help="the new thread's owner (default: the source's)")
    p.add_argument("--title", default="", help="the new thread's title (default: the source's)")
    p.set_defaults(run=fork)

    p = sub.add_parser("truncate", parents=[common], help="remove the messages after a seq (seqs are never reused)")
    p.add_argument("thread_id")
    p.add_argument("--after-seq", type=int, required=True, help="keep the messages up to this seq; 0 removes all")
    p.add_argument("--expected-last-seq", type=int, default=None, help="only if the thread's last seq is this")
    p.set_defaults(run=truncate)

    p = sub.add_parser("rm", parents=[common], help="delete a thread and all its messages")
    p.add_argument("thread_id")
    p.add_argument("--missing-ok", action="store_true", help="succeed when the thread does not exist")
    p.set_defaults(run=rm)


def _part_text(part: Part) -> str:
    # The same spelling as the server's context block, so a thread reads the same in both places.
    if isinstance(part, TextPart):
        return part.text
    if isinstance(part, ToolCall):
        return f"[tool call {part.name} id={part.id}: {part.arguments}]"
    if isinstance(part, ToolResult):
        return f"[tool result id={part.tool_call_id}{' error' if part.is_error else ''}: {part.text}]"
    if isinstance(part, Reasoning):
        return "[reasoning]"
    assert isinstance(part, Media)
    return f"[{part.mime_type} {part.uri or f'{len(part.data)} bytes inline'}]"


def render(m: Message) -> str:
    """Return a message as one human-readable line, ``seq role: text``, with newlines escaped."""
    text, after_text = "", False
    for part in m.parts:
        is_text = isinstance(part, TextPart)
        # Text parts concatenate (they make up ``content``); the others stand apart as bracketed words.
        text += ("" if not text or (is_text and after_text) else " ") + _part_text(part)
        after_text = is_text
    if not m.parts:
        text = m.content
    marks = " (compacted)" if m.compacted else ""
    return f"{m.seq} {m.role}{marks}: {text}".replace("\n", "\\n")


def _thread_lines(t: Thread) -> list[str]:
    lines = [f"thread: {t.thread_id}"]
    lines += [f"user: {t.user_id}"] if t.user_id else []
    lines += [f"title: {t.title}"] if t.title else []
    lines += [
        f"messages: {t.message_count} (last seq {t.last_seq})",
        f"created: {thread_to_json(t)['create_time']}",
        f"updated: {thread_to_json(t)['update_time']}",
    ]
    if t.parent_thread_id:
        lines.append(f"forked from: {t.parent_thread_id} through seq {t.fork_seq}")
    if t.compacted_through_seq:
        lines.append(f"compacted through seq: {t.compacted_through_seq}")
    return lines


async def ls(args: argparse.Namespace) -> int:
    """List a user's threads, ``<thread>  <n> messages  <title>``, or one JSON object per line."""
    async with connect(args) as memory:
        shown = 0
        async for t in memory.list_threads(args.user):
            if args.limit and shown >= args.limit:
                break
            shown += 1
            if wants_json(args):
                print(json.dumps(thread_to_json(t), ensure_ascii=False), flush=False)
            else:
                print(f"{t.thread_id}  {plural(t.message_count, 'message')}  {t.title}".rstrip())
    return 0


async def show(args: argparse.Namespace) -> int:
    """Print a thread's metadata and its newest messages, oldest of them first."""
    async with connect(args) as memory:
        thread = await memory.get_thread(args.thread_id)
        newest: list[Message] = []
        if args.messages > 0:
            async for page in memory.list_messages(args.thread_id, page_size=args.messages, reverse=True).pages():
                newest = list(reversed(page.items[: args.messages]))
                break
    if wants_json(args):
        doc = {"thread": thread_to_json(thread), "messages": [message_to_json(m) for m in newest]}
        print(json.dumps(doc, ensure_ascii=False))
        return 0
    print("\n".join(_thread_lines(thread)))
    if newest:
        print()
        print("\n".join(render(m) for m in newest))
    return 0


async def fork(args: argparse.Namespace) -> int:
    """Fork a thread and print the new one."""
    async with connect(args) as memory:
        thread = await memory.fork_thread(
            args.thread_id, args.new_thread_id, through_seq=args.through_seq, user_id=args.user, title=args.title
        )
    if wants_json(args):
        print(json.dumps(thread_to_json(thread), ensure_ascii=False))
    else:
        print(f"forked {args.thread_id!r} into {thread.thread_id!r} ({plural(thread.message_count, 'message')})")
    return 0


async def truncate(args: argparse.Namespace) -> int:
    """Remove the messages after ``--after-seq`` and say how many went."""
    async with connect(args) as memory:
        done = await memory.truncate_thread(args.thread_id, args.after_seq, expected_last_seq=args.expected_last_seq)
    if wants_json(args):
        doc = {"removed_count": done.removed_count, "thread": thread_to_json(done.thread)}
        print(json.dumps(doc, ensure_ascii=False))
    else:
        t = done.thread
        removed, left = plural(done.removed_count, "message"), plural(t.message_count, "message")
        print(f"removed {removed} from {t.thread_id!r}; {left} left")
    return 0


async def rm(args: argparse.Namespace) -> int:
    """Delete a thread (every tier) and say how many stored messages went with it."""
    async with connect(args) as memory:
        deleted = await memory.delete_thread(args.thread_id, allow_missing=args.missing_ok)
    if wants_json(args):
        print(json.dumps({"thread_id": args.thread_id, "deleted_messages": deleted}))
    else:
        print(f"deleted {args.thread_id!r} ({plural(deleted, 'stored message')})")
    return 0
