"""Conversions between domain records and chatmem.v1 protobuf messages."""

from __future__ import annotations

from google.protobuf import duration_pb2, timestamp_pb2

from chatmem.v1 import resources_pb2
from server.storage.codec import encode_message
from server.storage.models import PreferenceValue, StoredMessage, ThreadInfo
from server.storage.results import Served


def timestamp(us: int) -> timestamp_pb2.Timestamp:
    """Convert microseconds since the epoch to a Timestamp."""
    seconds, micros = divmod(us, 1_000_000)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=micros * 1000)


def message(workspace_id: str, thread_id: str, m: StoredMessage) -> resources_pb2.Message:
    """Convert a stored message to chatmem.v1.Message (from its stored bytes, so v2 fields come along)."""
    return resources_pb2.Message.FromString(encode_message(workspace_id, thread_id, m))


def thread(t: ThreadInfo, default_ttl_s: int) -> resources_pb2.Thread:
    """Convert a thread to chatmem.v1.Thread; ttl is the effective cache TTL."""
    return resources_pb2.Thread(
        workspace_id=t.workspace_id,
        thread_id=t.thread_id,
        user_id=t.user_id,
        title=t.title,
        ttl=duration_pb2.Duration(seconds=t.ttl_seconds or default_ttl_s),
        pinned=t.pinned,
        message_count=t.message_count,
        last_seq=t.last_seq,
        create_time=timestamp(t.create_time_us),
        update_time=timestamp(t.update_time_us),
        parent_thread_id=t.parent_thread_id,
        fork_seq=t.fork_seq,
        compacted_through_seq=t.compacted_through,
    )


def preference(key: str, p: PreferenceValue) -> resources_pb2.Preference:
    """Convert a preference to chatmem.v1.Preference."""
    return resources_pb2.Preference(key=key, value=p.value, update_time=timestamp(p.update_time_us))


def serving(s: Served) -> resources_pb2.ServingInfo:
    """Convert how a request was served to chatmem.v1.ServingInfo."""
    return resources_pb2.ServingInfo(tier=int(s.tier), degraded=s.degraded)  # type: ignore[arg-type]
