"""What the repository returns: how a request was served, and the results of its operations."""

from __future__ import annotations

from dataclasses import dataclass, field

from server.storage.models import Durability, PreferenceValue, Tier


@dataclass(frozen=True, slots=True)
class Served:
    """How a request was served: the tier that answered and whether a tier was unavailable."""

    tier: Tier
    degraded: bool = False


@dataclass(frozen=True, slots=True)
class AppendOutcome:
    """An acknowledged append; ``items`` are the stored messages' bytes (none on a replay)."""

    first_seq: int
    count: int
    message_count: int
    replayed: bool
    durability: Durability
    served: Served
    items: tuple[bytes, ...] = field(default=(), repr=False)

    @property
    def seqs(self) -> list[int]:
        """The seq of every appended message, in order."""
        return list(range(self.first_seq, self.first_seq + self.count))


@dataclass(frozen=True, slots=True)
class Window:
    """The recent window of a thread, oldest first.

    ``framed`` is the messages framed as repeated field 1: a serialised GetHistoryResponse holding
    only its ``messages``.
    """

    framed: bytes
    served: Served


@dataclass(frozen=True, slots=True)
class Preferences:
    """A user's preferences as read."""

    values: dict[str, PreferenceValue]
    served: Served


@dataclass(frozen=True, slots=True)
class UserErasure:
    """What DeleteUser deleted: threads, messages in the store, and preference keys."""

    threads: int
    messages: int
    preferences: int
    served: Served


@dataclass(frozen=True, slots=True)
class QueueProbe:
    """A thread's outbox state as a cache call just reported it.

    ``pending`` is (newest queued seq, flushed mark), or None when the thread has nothing unflushed.
    """

    pending: tuple[int, int] | None
