"""What the repository tells about threads as it changes them (the watch hub listens), and a no-op listener."""

from __future__ import annotations

from typing import Protocol

from server.storage.models import ThreadKey
from server.storage.results import AppendOutcome


class ThreadEvents(Protocol):
    """Receives a thread's changes once they are acknowledged; called inline, so it must not block."""

    def appended(self, key: ThreadKey, last_seq: int, outcome: AppendOutcome | None = None) -> None:
        """Take note that messages up to ``last_seq`` were appended to the thread.

        ``outcome`` is the append's, when the append was made here (it can give the stored messages).
        """
        ...

    def removed(self, key: ThreadKey) -> None:
        """Take note that the thread was deleted, or that messages were truncated from it."""
        ...


class NoEvents:
    """The listener when nobody listens."""

    def appended(self, key: ThreadKey, last_seq: int, outcome: AppendOutcome | None = None) -> None:
        """Ignore an append."""

    def removed(self, key: ThreadKey) -> None:
        """Ignore a removal."""
