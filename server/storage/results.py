"""What the repository returns: how a request was served, and the results of its operations."""

from __future__ import annotations

from dataclasses import dataclass, field

from server.storage.codec import sequenced
from server.storage.models import Durability, PreferenceValue, Tier


@dataclass(frozen=True, slots=True)
class Served:
    """How a request was served: the tier that answered and whether a tier was unavailable."""

    tier: Tier
    degraded: bool = False


@dataclass(frozen=True, slots=True)
class AppendOutcome:
    """An acknowledged append.

    ``encoded`` holds the appended messages as stored (none on a replay), or, when ``unsequenced``, as the
    write_behind script received them: without the seq it appends to each. ``stored_items`` builds the
    stored form only for a caller that needs it (a watched thread), so an unwatched append copies nothing.
    """

    first_seq: int
    count: int
    message_count: int
    replayed: bool
    durability: Durability
    served: Served
    encoded: tuple[bytes, ...] = field(default=(), repr=False)
    unsequenced: bool = False

    def stored_items(self) -> tuple[bytes, ...]:
        """Return the appended messages byte for byte as the tiers store them."""
        if not self.unsequenced:
            return self.encoded
        return tuple(sequenced(e, self.first_seq + i) for i, e in enumerate(self.encoded))

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
