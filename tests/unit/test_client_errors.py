"""The client maps every gRPC status code, and the rich google.rpc details, to its exception classes."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

import chatmem
from chatmem import errors

EXPECTED = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgumentError,
    grpc.StatusCode.OUT_OF_RANGE: errors.InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: errors.NotFoundError,
    grpc.StatusCode.ABORTED: errors.ConflictError,
    grpc.StatusCode.ALREADY_EXISTS: errors.ConflictError,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPreconditionError,
    grpc.StatusCode.UNAUTHENTICATED: errors.UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDeniedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: errors.UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.DeadlineExceededError,
    grpc.StatusCode.CANCELLED: errors.RequestCancelledError,
    grpc.StatusCode.UNIMPLEMENTED: errors.UnimplementedError,
    grpc.StatusCode.INTERNAL: errors.InternalError,
    grpc.StatusCode.UNKNOWN: errors.InternalError,
    grpc.StatusCode.DATA_LOSS: errors.InternalError,
}


def rpc_error(code: grpc.StatusCode, details: str, *packed_details: object) -> grpc.aio.AioRpcError:
    trailing = grpc.aio.Metadata()
    if packed_details:
        status = status_pb2.Status(code=code.value[0], message=details)
        for d in packed_details:
            packed = any_pb2.Any()
            packed.Pack(d)  # type: ignore[arg-type]
            status.details.append(packed)
        trailing = grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details)


def test_every_error_code_has_a_class() -> None:
    assert set(EXPECTED) == set(grpc.StatusCode) - {grpc.StatusCode.OK}


@pytest.mark.parametrize("code", list(EXPECTED), ids=lambda c: c.name)
def test_each_status_code_maps_to_its_exception(code: grpc.StatusCode) -> None:
    error = errors.from_grpc_error(rpc_error(code, f"boom {code.name}"))
    assert type(error) is EXPECTED[code]
    assert isinstance(error, chatmem.ChatmemError)
    assert error.code is code
    assert error.message == f"boom {code.name}"
    assert str(error) == f"{code.name}: boom {code.name}"
    assert error.retry_after is None and error.details == ()


def test_bad_request_detail_becomes_field_violations() -> None:
    bad = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field="thread_id", description="is required"),
            error_details_pb2.BadRequest.FieldViolation(field="messages[2].role", description="must be set"),
        ]
    )
    error = errors.from_grpc_error(rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "invalid thread_id", bad))
    assert isinstance(error, errors.InvalidArgumentError)
    assert isinstance(error, ValueError)
    assert error.violations == (
        errors.FieldViolation("thread_id", "is required"),
        errors.FieldViolation("messages[2].role", "must be set"),
    )
    assert error.fields == ["thread_id", "messages[2].role"]
    assert error.details == (bad,)


def test_retry_info_detail_becomes_retry_after() -> None:
    info = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=1, nanos=500_000_000))
    error = errors.from_grpc_error(rpc_error(grpc.StatusCode.UNAVAILABLE, "store down", info))
    assert isinstance(error, errors.UnavailableError)
    assert error.retry_after == 1.5


def test_error_info_becomes_reason_domain_and_metadata_and_the_trailer_gives_the_request_id() -> None:
    info = error_details_pb2.ErrorInfo(reason="THREAD_NOT_FOUND", domain="chatmem.dev", metadata={"thread_id": "t1"})
    status = status_pb2.Status(code=grpc.StatusCode.NOT_FOUND.value[0], message="thread 't1' not found")
    packed = any_pb2.Any()
    packed.Pack(info)
    status.details.append(packed)
    trailing = grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()), ("x-request-id", "r-42"))
    error = errors.from_grpc_error(
        grpc.aio.AioRpcError(grpc.StatusCode.NOT_FOUND, grpc.aio.Metadata(), trailing, "thread 't1' not found")
    )
    assert isinstance(error, errors.NotFoundError)
    assert (error.reason, error.domain, error.metadata) == ("THREAD_NOT_FOUND", "chatmem.dev", {"thread_id": "t1"})
    assert error.request_id == "r-42"
    bare = errors.from_grpc_error(rpc_error(grpc.StatusCode.UNAVAILABLE, "connection refused"))
    assert (bare.reason, bare.domain, bare.metadata, bare.request_id) == ("", "", {}, None)


def test_a_trailer_that_contradicts_the_status_line_is_ignored() -> None:
    status = status_pb2.Status(code=grpc.StatusCode.NOT_FOUND.value[0], message="other")
    trailing = grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
    exc = grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), trailing, "down")
    error = errors.from_grpc_error(exc)
    assert isinstance(error, errors.UnavailableError) and error.details == ()


def test_a_corrupt_trailer_is_ignored() -> None:
    trailing = grpc.aio.Metadata(("grpc-status-details-bin", b"\xff\xff\xff"))
    exc = grpc.aio.AioRpcError(grpc.StatusCode.INTERNAL, grpc.aio.Metadata(), trailing, "bad")
    assert type(errors.from_grpc_error(exc)) is errors.InternalError


def test_a_status_without_details_text_is_named_by_its_code() -> None:
    error = errors.from_grpc_error(grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, None, None, None))
    assert error.message == "UNAVAILABLE"
