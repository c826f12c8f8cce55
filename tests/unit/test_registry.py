"""The registration helper's deserializer: a parse failure becomes an Undecodable, never an exception."""

from __future__ import annotations

from chatmem.v1 import thread_memory_service_pb2 as pb
from server.services.registry import Undecodable, request_deserializer


def test_valid_bytes_parse_to_the_request_type() -> None:
    deserialize = request_deserializer(pb.GetThreadRequest.DESCRIPTOR)
    got = deserialize(pb.GetThreadRequest(thread_id="t", workspace_id="w").SerializeToString())
    assert got == pb.GetThreadRequest(thread_id="t", workspace_id="w")


def test_malformed_bytes_become_undecodable_with_a_field_violation() -> None:
    deserialize = request_deserializer(pb.GetThreadRequest.DESCRIPTOR)
    got = deserialize(b"\x12\x02\xff\xfe")  # thread_id holding invalid UTF-8
    assert isinstance(got, Undecodable)
    assert got.type_name == "chatmem.v1.GetThreadRequest"
    error = got.error()
    assert [(v.field, v.description) for v in error.violations] == [
        ("request", f"is not a valid chatmem.v1.GetThreadRequest message: {got.reason}")
    ]
    assert got.reason and "chatmem.v1" not in got.reason
