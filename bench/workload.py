"""The benchmark workload, shared by the harness and its load generators: threads, texts, operations, targets."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.latency import make_contents

WORKSPACE = "bench"

# The operations, in the order the harness runs them. ``append`` runs last so that the reads of the
# ``base`` threads see 60-message threads; each chat length has threads of its own, since a chat loop
# grows them.
RPC = "rpc"
READ = "read"
HYDRATE = "hydrate"
STREAM = "stream"
APPEND = "append"
CHAT_PREFIX = "chat@"

LIMIT_GRPC = "limit-grpc"
LIMIT_REDIS = "limit-redis"
LIMIT_POSTGRES = "limit-postgres"
LANGCHAIN_POSTGRES = "langchain-postgres"
LANGCHAIN_REDIS = "langchain-redis"
CHATMEM_WB = "chatmem-wb"
CHATMEM_WT = "chatmem-wt"
# write_behind servers with GRPC__WORKERS=1 and 2, called over several channels: CPU per op with 1 and 2
# workers (bench/percore.py).
CHATMEM_WB_W1 = "chatmem-wb-w1"
CHATMEM_WB_W2 = "chatmem-wb-w2"
PER_CORE = (CHATMEM_WB_W1, CHATMEM_WB_W2)
CHATMEM_SQLITE = "chatmem-sqlite"  # the embedded default: SQLite, no Redis (bench/sqlite_target.py)
ALL_TARGETS = (
    LIMIT_GRPC, LIMIT_REDIS, LIMIT_POSTGRES, LANGCHAIN_POSTGRES, LANGCHAIN_REDIS,
    CHATMEM_WB, CHATMEM_WT, CHATMEM_SQLITE, *PER_CORE,
)  # fmt: skip
PEERS = (LANGCHAIN_POSTGRES, LANGCHAIN_REDIS)
LIMITS = (LIMIT_GRPC, LIMIT_REDIS, LIMIT_POSTGRES)
CHATMEM = (CHATMEM_WB, CHATMEM_WT, CHATMEM_SQLITE)


def chat_op(length: int) -> str:
    """Return the name of the chat-loop operation on threads of ``length`` messages."""
    return f"{CHAT_PREFIX}{length}"


def is_chat(op: str) -> bool:
    """True for a chat-loop operation."""
    return op.startswith(CHAT_PREFIX)


def supported_ops(target: str, chat_lengths: tuple[int, ...]) -> tuple[str, ...]:
    """Return the operations a target runs, in harness order.

    limit-grpc has the one fixed RPC. Hydration and streaming read the store past the cache, so they run on
    chatmem in write_behind (write_through reads the same way) and on limit-postgres, which reads the same
    rows; the library peers have no window to drop and read a whole session on every call anyway.
    """
    chats = tuple(chat_op(n) for n in chat_lengths)
    if target == LIMIT_GRPC:
        return (RPC,)
    if target in (LIMIT_POSTGRES, CHATMEM_WB):
        return (READ, HYDRATE, STREAM, *chats, APPEND)
    if target in PER_CORE:
        return (READ, APPEND)
    if target == CHATMEM_SQLITE:
        return (READ, APPEND)  # the embedded default's window reads and its fsynced appends: the `base` set
    return (READ, *chats, APPEND)


@dataclass(frozen=True)
class ThreadSet:
    """A set of threads preloaded with the same number of alternating user/assistant messages.

    ``bulk`` sets are written straight into PostgreSQL (COPY-like INSERT ... SELECT), far faster than the
    API for 100,000-message threads; the others are preloaded through each target's own write path.
    """

    prefix: str
    count: int
    length: int
    bulk: bool = False

    def ids(self) -> list[str]:
        """The thread ids."""
        return [f"{self.prefix}-{i:04d}" for i in range(self.count)]


@dataclass(frozen=True)
class Workload:
    """Everything a load generator needs to know about the data."""

    sets: dict[str, ThreadSet]
    chat_lengths: tuple[int, ...]
    workspace: str = WORKSPACE
    window: int = 50
    content_chars: int = 300
    stream_chunk: int = 500
    seed: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        *,
        threads: int,
        messages: int,
        chat_lengths: tuple[int, ...],
        long_threads: int,
        hydrate_threads: int,
        hydrate_messages: int,
        stream_messages: int,
        window: int,
        content_chars: int,
        stream_chunk: int,
        seed: int,
    ) -> Workload:
        """Build the thread sets: ``base`` (read, append), one per chat length, ``hydrate`` and ``stream``."""
        sets = {"base": ThreadSet("base", threads, messages)}
        for n in chat_lengths:
            sets[chat_op(n)] = ThreadSet(f"c{n}", threads if n <= messages else long_threads, n)
        sets[HYDRATE] = ThreadSet("hyd", hydrate_threads, hydrate_messages, bulk=True)
        sets[STREAM] = ThreadSet("stream", 1, stream_messages, bulk=True)
        return cls(sets, chat_lengths, WORKSPACE, window, content_chars, stream_chunk, seed)

    def set_of(self, op: str) -> ThreadSet:
        """The thread set an operation works on."""
        return self.sets["base"] if op in (READ, APPEND) else self.sets[op]

    def api_sets(self) -> list[ThreadSet]:
        """The sets preloaded through each target's write path."""
        return [s for s in self.sets.values() if not s.bulk]

    def to_json(self) -> dict[str, Any]:
        """A JSON-able form (see :meth:`from_json`)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Workload:
        """Rebuild from :meth:`to_json`."""
        sets = {k: ThreadSet(**v) for k, v in data["sets"].items()}
        rest = {k: v for k, v in data.items() if k not in ("sets", "chat_lengths")}
        return cls(sets=sets, chat_lengths=tuple(data["chat_lengths"]), **rest)

    def contents(self, n: int = 256) -> list[str]:
        """The message texts (``content_chars`` characters of English-like words), the same in every process."""
        return make_contents(random.Random(self.seed), n, self.content_chars)


def worker_threads(thread_ids: list[str], worker: int, concurrency: int) -> list[str]:
    """The threads worker ``worker`` of ``concurrency`` works on: its own share, or one shared thread.

    With at least as many threads as workers, no two workers ever touch the same thread (as distinct users
    would not); with fewer, workers share threads round-robin.
    """
    if len(thread_ids) >= concurrency:
        return thread_ids[worker::concurrency]
    return [thread_ids[worker % len(thread_ids)]]
