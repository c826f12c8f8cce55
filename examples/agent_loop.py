"""A minimal agent loop with chatmem memory: invoking() before each model call, invoked() after it.

The "model" is a stub (no LLM is needed): it answers from the context block, so the effect of memory
shows. With the server down the loop still runs, stateless, and chatmem logs a warning.
"""

from __future__ import annotations

import asyncio
import re
import sys

from chatmem import ChatmemError, MemoryClient, ThreadContextProvider


def model(context: str, user_message: str) -> str:
    """Stand in for an LLM: greet, recall the user's name from the context, or say what it knows."""
    if match := re.search(r"my name is (\w+)", user_message, re.IGNORECASE):
        return f"Nice to meet you, {match.group(1)}."
    if "my name" in user_message.lower():
        found = re.search(r"^user: .*my name is (\w+)", context, re.IGNORECASE | re.MULTILINE)
        return f"Your name is {found.group(1)}." if found else "I don't know your name yet."
    tone = re.search(r"^tone: (\w+)", context, re.MULTILINE)
    return f"Noted ({tone.group(1) if tone else 'no'} tone preference)."


async def main(target: str = "127.0.0.1:50051") -> None:
    """Run three turns of a conversation for the user ``ada`` in the thread ``agent-demo``."""
    async with MemoryClient.connect(target) as memory:
        provider = ThreadContextProvider(memory, thread_id="agent-demo", user_id="ada")
        try:
            await memory.clear("agent-demo")  # start fresh, so that every run prints the same
            await memory.set_preferences("ada", {"tone": "brief"})
        except ChatmemError as exc:  # the demo goes on without memory, as an agent would
            print(f"(memory is down: {type(exc).__name__})")
        for user_message in ["Hi, my name is Ada.", "What is my name?", "Remember that I like tea."]:
            context = await provider.invoking()
            reply = model(context, user_message)
            await provider.invoked(user_message, reply)
            print(f"user: {user_message}\nassistant: {reply}")
        print("--- context for the next turn ---")
        print(await provider.invoking())


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
