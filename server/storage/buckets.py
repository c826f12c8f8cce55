"""Buckets: the stable hash of a workspace and an object that places its Redis keys on one slot.

The store records the bucket of every repair and keeps one epoch per bucket, so that a Redis Cluster
master that is down degrades, and later repairs, only the buckets whose slots it holds.
"""

from __future__ import annotations

import zlib

BUCKETS = 256


def bucket_of(workspace_id: str, object_id: str) -> int:
    """Return the stable bucket (0..BUCKETS-1) of an object within a workspace."""
    return zlib.crc32(f"{workspace_id}/{object_id}".encode()) % BUCKETS
