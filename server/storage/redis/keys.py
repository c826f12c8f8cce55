"""Every Redis key chatmem uses, built in one place so that each script's keys share one hash tag.

A thread's keys carry the tag ``{b:N}`` where N is a stable hash of workspace and thread modulo
BUCKETS, so that a script over a thread's window, its metadata, its request ids and its bucket's outbox
stream runs on one Redis Cluster slot. Ids reach this module only after validation (a safe character set with no
braces), so no client text can change a key's hash tag.
"""

from __future__ import annotations

from dataclasses import dataclass

from server.storage.buckets import BUCKETS, bucket_of

__all__ = ["BUCKETS", "KeySpace", "ThreadKeys", "bucket_of"]


@dataclass(frozen=True, slots=True)
class ThreadKeys:
    """The keys of one thread, all on its bucket's slot.

    They are the window, the metadata, the request ids, and the bucket's outbox stream and pending
    hash (``field`` is the thread's name in that hash).
    """

    msgs: str
    meta: str
    reqs: str
    outbox: str
    pending: str
    field: str


@dataclass(frozen=True, slots=True)
class KeySpace:
    """Builds keys under a prefix (default ``chatmem``)."""

    prefix: str = "chatmem"

    def thread(self, workspace_id: str, thread_id: str) -> ThreadKeys:
        """Return every key of a thread: window, metadata, request ids, and its bucket's outbox and pending hash."""
        bucket = bucket_of(workspace_id, thread_id)
        base = f"{self.prefix}:{{b:{bucket}}}:t:{workspace_id}/{thread_id}"
        return ThreadKeys(
            msgs=f"{base}:win",  # window items framed as repeated field 1 (codec.frame_item)
            meta=f"{base}:meta",
            reqs=f"{base}:reqs",
            outbox=self.outbox(bucket),
            pending=self.pending(bucket),
            field=f"{workspace_id}/{thread_id}",
        )

    def outbox(self, bucket: int) -> str:
        """Return the outbox stream of a bucket."""
        return f"{self.prefix}:{{b:{bucket}}}:outbox"

    def pending(self, bucket: int) -> str:
        """Return the hash of threads with unflushed messages in a bucket."""
        return f"{self.prefix}:{{b:{bucket}}}:pending"

    def thread_meta(self, field: str) -> str:
        """Return the metadata key of a thread named by its pending field ``<ws>/<thread>``."""
        workspace_id, _, thread_id = field.partition("/")
        return self.thread(workspace_id, thread_id).meta

    def quota(self, workspace_id: str) -> tuple[str, str]:
        """Return a workspace's request and append-bytes token buckets (one tag, so one script covers both)."""
        base = f"{self.prefix}:{{q:{workspace_id}}}:quota"
        return f"{base}:req", f"{base}:bytes"

    def streams(self, workspace_id: str) -> str:
        """Return the sorted set of a workspace's open StreamHistory leases."""
        return f"{self.prefix}:{{q:{workspace_id}}}:streams"

    def probe(self, bucket: int) -> str:
        """Return a key on a bucket's slot, never written: the breaker of that bucket reads it to probe."""
        return f"{self.prefix}:{{b:{bucket}}}:probe"

    def preferences(self, workspace_id: str, user_id: str) -> str:
        """Return the preferences hash key of a user."""
        tag = bucket_of(workspace_id, user_id)
        return f"{self.prefix}:{{b:{tag}}}:u:{workspace_id}/{user_id}:prefs"
