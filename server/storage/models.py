"""Plain domain records passed between the repository, the stores and the cache."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from server.storage.buckets import bucket_of


class Role(enum.IntEnum):
    """Message author; the values equal chatmem.v1.Role so that they cross the wire unchanged."""

    USER = 1
    ASSISTANT = 2
    SYSTEM = 3
    TOOL = 4
    DEVELOPER = 5


class Tier(enum.IntEnum):
    """The tier that served a read; values equal chatmem.v1.Tier."""

    CACHE = 1
    STORE = 2


class Durability(enum.IntEnum):
    """How durable an acknowledged write is; values equal chatmem.v1.Durability."""

    PERSISTED = 1
    QUEUED = 2


@dataclass(frozen=True, slots=True)
class ThreadKey:
    """Identifies a thread within a workspace."""

    workspace_id: str
    thread_id: str

    @property
    def bucket(self) -> int:
        """The thread's bucket (its Redis keys' slot group)."""
        return bucket_of(self.workspace_id, self.thread_id)


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message to append; the store assigns its seq and create time.

    ``extra`` is the message's v2 fields (parts, envelope, message_id, token_count) serialised as
    chatmem.v1 fields 9-12, which MessageInput and Message share: the codec appends them unparsed.
    """

    role: Role
    content: str
    name: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    message_id: str = ""
    extra: bytes = b""


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message as stored: create_time_us is microseconds since the Unix epoch (UTC).

    ``encoded`` is the serialised chatmem.v1.Message the store keeps with the row, when it has one;
    ``extra`` is the v2 fields as in NewMessage, needed only until ``encoded`` is made.
    """

    seq: int
    role: Role
    content: str
    name: str
    metadata: dict[str, str]
    create_time_us: int
    encoded: bytes | None = field(default=None, compare=False, repr=False)
    message_id: str = ""
    extra: bytes = field(default=b"", repr=False)


@dataclass(frozen=True, slots=True)
class EncodedPage:
    """A keyset page of a thread's messages as serialised chatmem.v1.Message, and the last seq in it."""

    items: list[bytes]
    last_seq: int


@dataclass(frozen=True, slots=True)
class FramedPage:
    """A keyset page of a thread's messages framed as repeated field 1, ready to send as stream responses.

    ``runs`` are the page's messages in order, joined into runs of at most the frame limit each (one run
    unless the page is bigger than that); ``count`` is how many messages they hold, ``last_seq`` the last.
    """

    runs: list[bytes]
    count: int
    last_seq: int


@dataclass(frozen=True, slots=True)
class ThreadInfo:
    """A thread's metadata. ttl_seconds None means the server default; incarnation changes on re-creation.

    A fork names its parent and the parent's last copied seq; ``compacted_through`` is the seq up to which
    a CompactThread summary stands in for the messages (0: none).
    """

    workspace_id: str
    thread_id: str
    user_id: str
    title: str
    ttl_seconds: int | None
    pinned: bool
    message_count: int
    last_seq: int
    incarnation: int
    create_time_us: int
    update_time_us: int
    parent_thread_id: str = ""
    fork_seq: int = 0
    compacted_through: int = 0


@dataclass(frozen=True, slots=True)
class NewThreadOptions:
    """What the first append may say about the thread it creates."""

    user_id: str = ""
    title: str = ""
    ttl_seconds: int | None = None


@dataclass(frozen=True, slots=True)
class AppendCommand:
    """One AppendMessages request as the store sees it."""

    key: ThreadKey
    messages: tuple[NewMessage, ...]
    request_id: str = ""
    expected_last_seq: int | None = None
    new_thread: NewThreadOptions = NewThreadOptions()


@dataclass(frozen=True, slots=True)
class AppendResult:
    """The outcome of an append: the stored messages (empty on a replay) and the thread after it."""

    first_seq: int
    count: int
    message_count: int
    replayed: bool
    thread: ThreadInfo
    stored: tuple[StoredMessage, ...]

    @property
    def thread_key(self) -> ThreadKey:
        """The thread this append went to."""
        return ThreadKey(self.thread.workspace_id, self.thread.thread_id)

    @property
    def seqs(self) -> list[int]:
        """The seq of every appended message, in order."""
        return list(range(self.first_seq, self.first_seq + self.count))


@dataclass(frozen=True, slots=True)
class ThreadTail:
    """The newest messages of a thread (oldest first) with the thread they belong to."""

    thread: ThreadInfo
    messages: list[StoredMessage]


@dataclass(frozen=True, slots=True)
class EncodedTail:
    """The newest messages of a thread (oldest first) as serialised chatmem.v1.Message, with the thread."""

    thread: ThreadInfo
    items: list[bytes]


@dataclass(frozen=True, slots=True)
class WindowRead:
    """A window read: the framed window on a hit; on a miss, what the thread has queued but not flushed.

    ``framed`` is the window's messages as the repeated ``messages`` field, concatenated: what a
    response carries, built by Redis (one reply to parse instead of one per message).
    ``pending`` is (newest queued seq, flushed mark), or None when nothing is waiting for the flusher.
    ``fence`` is the thread's trim generation on a miss, which the fill that follows passes back.
    """

    framed: bytes | None
    pending: tuple[int, int] | None = None
    fence: int | None = None


@dataclass(frozen=True, slots=True)
class ThreadPatch:
    """The fields UpdateThread changes; None leaves a field alone. ttl_seconds 0 restores the default."""

    title: str | None = None
    ttl_seconds: int | None = None
    pinned: bool | None = None


@dataclass(frozen=True, slots=True)
class ThreadCursor:
    """Keyset position in a user's thread list (newest first)."""

    create_time_us: int
    thread_id: str


@dataclass(frozen=True, slots=True)
class Trimmed:
    """Messages the retention sweep deleted from a live thread (the thread's incarnation at the time)."""

    key: ThreadKey
    incarnation: int
    count: int


@dataclass(frozen=True, slots=True)
class PreferenceValue:
    """One stored preference."""

    value: str
    update_time_us: int


@dataclass(frozen=True, slots=True)
class PreferenceSet:
    """All of a user's preferences and the version that changes on every write."""

    version: int
    values: dict[str, PreferenceValue]


@dataclass(frozen=True, slots=True)
class PreferenceChange:
    """The outcome of a preference write: the new version and what changed."""

    version: int
    set_values: dict[str, PreferenceValue]
    deleted_keys: tuple[str, ...]
    deleted_all: bool
    affected: int


@dataclass(frozen=True, slots=True)
class QueuedAppend:
    """An outbox entry: an append acknowledged as QUEUED, on its way to the store."""

    key: ThreadKey
    incarnation: int
    request_id: str
    first_seq: int
    message_count: int
    new_thread: NewThreadOptions | None
    messages: tuple[StoredMessage, ...]


@dataclass(frozen=True, slots=True)
class Seed:
    """What the store knows of a thread, to seed a missing Redis counter.

    For an unknown thread, incarnation is a fresh one, larger than any deleted incarnation.
    """

    exists: bool
    last_seq: int
    message_count: int
    incarnation: int
    ttl_seconds: int | None = None
    pinned: bool = False
    dead_incarnation: int = 0


@dataclass(frozen=True, slots=True)
class Repair:
    """A cache entry that may be stale because a write went around Redis.

    Kinds: ``a`` a thread appended to through the store (its Redis seq counter may be behind, and the
    append already skipped the fallback gap), ``t`` a thread otherwise changed, ``u`` a user's preferences.
    """

    kind: str
    workspace_id: str
    object_id: str
    marked_us: int = 0

    @property
    def bucket(self) -> int:
        """The bucket of the cache entry (the Redis slot group it lives on)."""
        return bucket_of(self.workspace_id, self.object_id)


@dataclass(frozen=True, slots=True)
class QueuedRequest:
    """A write_behind append as the cache script takes it (messages encoded without their seq)."""

    key: ThreadKey
    encoded: tuple[bytes, ...]
    request_id: str
    expected_last_seq: int | None
    new_ttl_s: int
    options_json: str
    request_ttl_s: int
    max_unflushed: int
    seed: Seed | None = None
    message_ids: tuple[str, ...] = ()  # one per message ('' for none), or () when none has one


@dataclass(frozen=True, slots=True)
class QueuedReply:
    """The script's answer: ``ok``, ``dup``, ``seed``, ``aborted``, ``backlog`` or ``taken``.

    ``dup`` is a replay, ``seed`` a missing counter, and ``taken`` names (in ``value``) the index of a
    message whose id the thread holds.
    """

    kind: str
    first: int = 0
    count: int = 0
    message_count: int = 0
    incarnation: int = 0
    value: int = 0


Fence = dict[int, int]
"""The repair epoch of each bucket a write around Redis was made under (see RepairLog.begin_recovery)."""


@dataclass(frozen=True, slots=True)
class ForkResult:
    """A ForkThread: the new thread, how many messages it got, and whether an earlier call made it."""

    thread: ThreadInfo
    copied: int
    replayed: bool


@dataclass(frozen=True, slots=True)
class TruncateResult:
    """A TruncateThread: the thread after it, the newest removed messages, their count and their ids.

    ``removed`` holds at most the ``keep`` newest removed messages, oldest first; ``removed_ids`` every
    client message id removed (so that the cache forgets them too).
    """

    thread: ThreadInfo
    removed: list[StoredMessage]
    removed_count: int
    removed_ids: list[str]


@dataclass(frozen=True, slots=True)
class CompactResult:
    """A CompactThread: the thread after it, and whether an earlier call with the same request id made it."""

    thread: ThreadInfo
    replayed: bool
