"""The one owner of the protobuf encoding of messages as the cache and the store keep them.

The cache keeps each message as a serialised ``chatmem.v1.Message``, so that a window read is an
LRANGE plus framing into a response, with no per-message parse. The store keeps the same bytes in
each row's ``encoded`` column, so that streams and cache fills send them without encoding again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from chatmem.v1 import resources_pb2, thread_memory_service_pb2
from server.storage.models import NewMessage, Role, StoredMessage


def encode_message(workspace_id: str, thread_id: str, message: StoredMessage) -> bytes:
    """Serialise a stored message as a chatmem.v1.Message (the store's copy when it kept one)."""
    if message.encoded is not None:
        return message.encoded
    pb = resources_pb2.Message(
        workspace_id=workspace_id,
        thread_id=thread_id,
        seq=message.seq,
        role=int(message.role),  # type: ignore[arg-type]
        content=message.content,
        name=message.name,
        metadata=message.metadata,
    )
    pb.create_time.seconds, micros = divmod(message.create_time_us, 1_000_000)
    pb.create_time.nanos = micros * 1000
    # Fields 9-12 arrive serialised from the request; protobuf concatenation merges them unparsed.
    return pb.SerializeToString() + message.extra


def with_encoding(workspace_id: str, thread_id: str, message: StoredMessage) -> StoredMessage:
    """Return the message carrying its serialised form, so that later writers need not encode it again."""
    if message.encoded is not None:
        return message
    return dataclasses.replace(message, encoded=encode_message(workspace_id, thread_id, message))


def encode_messages(workspace_id: str, thread_id: str, messages: Iterable[StoredMessage]) -> list[bytes]:
    """Serialise several messages."""
    return [encode_message(workspace_id, thread_id, m) for m in messages]


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def frame_item(encoded: bytes) -> bytes:
    """Frame one encoded message as an element of repeated field 1 (``messages`` of every response).

    The cache stores window items framed, so that a window read is a join of LRANGE's items: the
    result is a valid serialised GetHistoryResponse (protobuf concatenation appends to repeated
    fields) and needs no per-message work at all.
    """
    return _ITEM_TAG + _varint(len(encoded)) + encoded


_ITEM_TAG = bytes([(1 << 3) | 2])


def join_runs(framed: Sequence[bytes], max_bytes: int) -> list[bytes]:
    """Join framed messages (see frame_item) into runs of at most ``max_bytes`` each (a bigger one alone).

    A stream sends each run as one response, so that no response exceeds the frame limit.
    """
    if sum(map(len, framed)) <= max_bytes:
        return [b"".join(framed)] if framed else []
    runs: list[bytes] = []
    run: list[bytes] = []
    size = 0
    for item in framed:
        if run and size + len(item) > max_bytes:
            runs.append(b"".join(run))
            run, size = [], 0
        run.append(item)
        size += len(item)
    if run:
        runs.append(b"".join(run))
    return runs


def frame_runs(encoded: Iterable[bytes], max_bytes: int) -> list[bytes]:
    """Frame messages as repeated field 1 and join them into runs of at most ``max_bytes`` (see join_runs)."""
    return join_runs([frame_item(e) for e in encoded], max_bytes)


def frame_repeated(field_number: int, encoded: Sequence[bytes]) -> bytes:
    """Frame already-encoded messages as a repeated message field, ready to parse into a response."""
    if field_number == 1:
        return b"".join(frame_item(item) for item in encoded)
    tag = bytes([(field_number << 3) | 2])
    return b"".join(tag + _varint(len(item)) + item for item in encoded)


def encode_unsequenced(workspace_id: str, thread_id: str, message: NewMessage, create_time_us: int) -> bytes:
    """Serialise a new message without its seq; the write_behind script appends field 3 (seq) itself."""
    return encode_message(
        workspace_id,
        thread_id,
        StoredMessage(
            0, message.role, message.content, message.name, message.metadata, create_time_us, extra=message.extra
        ),
    )


def sequenced(encoded: bytes, seq: int) -> bytes:
    """Return an unsequenced message with its seq, byte for byte as the write_behind script stores it."""
    return encoded + _SEQ_TAG + _varint(seq)


_SEQ_TAG = bytes([(3 << 3) | 0])


def split_framed(framed: bytes) -> list[bytes]:
    """Return the serialised messages of a buffer framed as repeated field 1, without parsing them."""
    items = []
    pos, end = 0, len(framed)
    while pos < end:
        if framed[pos] != _ITEM_TAG[0]:
            raise ValueError(f"not a framed message at byte {pos}")
        pos += 1
        length = shift = 0
        while True:
            byte = framed[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            if byte < 0x80:
                break
            shift += 7
        items.append(framed[pos : pos + length])
        pos += length
    if pos != end:
        raise ValueError("a framed message runs past the end of the buffer")
    return items


def decode_framed(framed: bytes) -> list[StoredMessage]:
    """Decode messages framed as a repeated field 1 (as the outbox stores them), keeping each one's bytes."""
    parsed = thread_memory_service_pb2.GetHistoryResponse.FromString(framed)
    return [
        StoredMessage(
            seq=m.seq,
            role=Role(m.role),
            content=m.content,
            name=m.name,
            metadata=dict(m.metadata),
            create_time_us=m.create_time.seconds * 1_000_000 + m.create_time.nanos // 1000,
            encoded=encoded,
            message_id=m.message_id,
        )
        for m, encoded in zip(parsed.messages, split_framed(framed), strict=True)
    ]


# Field 13 (Message.compacted) = true, as a varint field; appended to a stored message it marks the copy
# that ListMessages and StreamHistory send, without parsing it (the last value of a field wins).
_COMPACTED_FLAG = bytes([(13 << 3) | 0, 1])


COMPACTED_FLAG = _COMPACTED_FLAG  # for a store that appends it in SQL


def mark_compacted(encoded: bytes) -> bytes:
    """Return a serialised message marked as compacted (a summary stands in for it)."""
    return encoded + _COMPACTED_FLAG


def decode_message(encoded: bytes) -> StoredMessage:
    """Decode one serialised chatmem.v1.Message, keeping its bytes."""
    return decode_framed(frame_item(encoded))[0]


def reseat(workspace_id: str, thread_id: str, seq: int, message: StoredMessage) -> StoredMessage:
    """Return a copy of a stored message placed in another thread at another seq (ForkThread's copies)."""
    pb = resources_pb2.Message.FromString(encode_message(workspace_id, thread_id, message))
    pb.thread_id, pb.seq = thread_id, seq
    return dataclasses.replace(message, seq=seq, encoded=pb.SerializeToString())


def encode_summary(workspace_id: str, thread_id: str, through_seq: int, summary: NewMessage, now_us: int) -> bytes:
    """Serialise a CompactThread summary: a Message at seq ``through_seq`` that says what it stands for."""
    stored = StoredMessage(
        through_seq, summary.role, summary.content, summary.name, summary.metadata, now_us, extra=summary.extra
    )
    pb = resources_pb2.Message.FromString(encode_message(workspace_id, thread_id, stored))
    pb.summarizes_through_seq = through_seq
    return pb.SerializeToString()
