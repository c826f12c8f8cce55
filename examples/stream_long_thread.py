"""Stream a long thread with constant memory, resume it from a seq, and page through it backwards."""

from __future__ import annotations

import asyncio
import sys

from chatmem import MemoryClient, MessageInput

THREAD = "long-demo"
TOTAL = 10_000


async def main(target: str = "127.0.0.1:50051") -> None:
    """Write a 10,000-message thread, then read it back three ways."""
    async with MemoryClient.connect(target) as memory:
        await memory.clear(THREAD)  # start fresh, so that every run prints the same
        for start in range(0, TOTAL, 100):  # at most 100 messages per append
            batch = [
                MessageInput("user" if i % 2 == 0 else "assistant", f"message {i + 1}")
                for i in range(start, start + 100)
            ]
            await memory.append_messages(THREAD, batch)

        # The whole thread, in chunks of 1000: memory stays flat at any length, and a stream broken by
        # a server restart resumes by itself after the last seq received.
        count, in_order = 0, True
        async for message in memory.stream_history(THREAD, chunk_size=1000):
            count += 1
            in_order = in_order and message.seq == count and message.content == f"message {count}"
        print(f"streamed {count} messages, {'in order' if in_order else 'OUT OF ORDER'}")

        # Resume after a seq, as an export job does after a crash.
        tail = [m.seq async for m in memory.stream_history(THREAD, after_seq=TOTAL - 5)]
        print("after seq", TOTAL - 5, "->", tail)

        # The newest messages first, a page at a time.
        pages = memory.list_messages(THREAD, page_size=3, reverse=True).pages()
        first = await anext(pages)
        print("newest page:", [f"{m.seq} {m.role}: {m.content}" for m in first.items])
        print("thread length:", await memory.count(THREAD))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
