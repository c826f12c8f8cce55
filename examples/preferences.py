"""Keep a user's preferences and see them in the prompt context, with the blocking client."""

from __future__ import annotations

import sys

from chatmem import SyncMemoryClient


def main(target: str = "127.0.0.1:50051") -> None:
    """Set, read, use and delete the preferences of the user ``grace``."""
    with SyncMemoryClient.connect(target) as memory:
        memory.delete_preferences("grace", all_keys=True)  # start fresh, so that every run prints the same
        memory.set_preferences("grace", {"language": "French", "tone": "formal", "units": "metric"})
        print(memory.get_preferences("grace"))
        print(memory.get_preferences("grace", keys=["tone"]))

        memory.set_preferences("grace", {"tone": "casual"})  # an upsert changes one key
        typed = {pref.key: pref for pref in memory.get_preferences("grace", typed=True)}
        for pref in typed.values():
            print(f"{pref.key} = {pref.value}")
        print("tone set last:", typed["tone"].update_time >= typed["language"].update_time)

        print(memory.get_context(user_id="grace"))  # no thread: only the preferences section

        print("deleted:", memory.delete_preferences("grace", ["units"]))
        print("deleted:", memory.delete_preferences("grace", all_keys=True))
        print(memory.get_preferences("grace"))


if __name__ == "__main__":
    main(*sys.argv[1:])
