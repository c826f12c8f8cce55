"""The client's exceptions: one class per kind of failure, mapped from gRPC status codes and rich details."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2
from grpc_status import rpc_status

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad field of a request.

    Attributes:
        field: the field's path, for example ``messages[2].role``.
        description: what is wrong with it.
    """

    field: str
    description: str


class ChatmemError(Exception):
    """Base of every error a chatmem call raises.

    Attributes:
        code: the gRPC status code of the failed call.
        message: the server's (or gRPC's) description.
        retry_after: seconds the server asked the caller to wait before retrying
            (from a ``google.rpc.RetryInfo`` detail), or None.
        details: the unpacked ``google.rpc`` detail messages of the status, if any.
        reason: the stable reason of the server's ``google.rpc.ErrorInfo`` (e.g. ``THREAD_NOT_FOUND``;
            the README lists them), or ``""`` when the status did not come from the chatmem server
            (no server reachable, a proxy, or gRPC itself, e.g. an oversized request).
        domain: the ErrorInfo's domain (``chatmem.dev``), or ``""``.
        metadata: the ErrorInfo's metadata (e.g. ``{"thread_id": ...}``).
        request_id: the ``x-request-id`` the server echoed in the trailers, or None.
    """

    default_code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        retry_after: float | None = None,
        details: tuple[Any, ...] = (),
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.retry_after = retry_after
        self.details = details
        self.request_id = request_id
        info = next((d for d in details if isinstance(d, error_details_pb2.ErrorInfo)), None)
        self.reason: str = info.reason if info is not None else ""
        self.domain: str = info.domain if info is not None else ""
        self.metadata: dict[str, str] = dict(info.metadata) if info is not None else {}

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


class InvalidArgumentError(ChatmemError, ValueError):
    """The request was malformed (INVALID_ARGUMENT or OUT_OF_RANGE), by the server's or the client's checks.

    It is also a ValueError, so that input checks made before a call and the server's read alike.

    Attributes:
        violations: every offending field the server named (from a ``google.rpc.BadRequest``).
    """

    default_code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, message: str, *, violations: tuple[FieldViolation, ...] = (), **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.violations = violations

    @property
    def fields(self) -> list[str]:
        """The paths of the offending fields, in the server's order."""
        return [v.field for v in self.violations]


class NotFoundError(ChatmemError):
    """The thread (or other resource) does not exist (NOT_FOUND)."""

    default_code = grpc.StatusCode.NOT_FOUND


class ConflictError(ChatmemError):
    """A concurrent change won (ABORTED, for example ``expected_last_seq`` did not match; or ALREADY_EXISTS)."""

    default_code = grpc.StatusCode.ABORTED


class FailedPreconditionError(ChatmemError):
    """The system is not in a state the call needs (FAILED_PRECONDITION)."""

    default_code = grpc.StatusCode.FAILED_PRECONDITION


class UnauthenticatedError(ChatmemError):
    """The call carried no valid credential (UNAUTHENTICATED)."""

    default_code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDeniedError(ChatmemError):
    """The credential may not do this (PERMISSION_DENIED)."""

    default_code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhaustedError(ChatmemError):
    """A limit was hit, for example a request larger than the server accepts (RESOURCE_EXHAUSTED)."""

    default_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class UnavailableError(ChatmemError):
    """The server, or a tier it needs, cannot be reached now; retrying later may succeed (UNAVAILABLE)."""

    default_code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceededError(ChatmemError):
    """The call's deadline passed before it finished (DEADLINE_EXCEEDED)."""

    default_code = grpc.StatusCode.DEADLINE_EXCEEDED


class RequestCancelledError(ChatmemError):
    """The call was cancelled before it finished (CANCELLED)."""

    default_code = grpc.StatusCode.CANCELLED


class UnimplementedError(ChatmemError):
    """The server does not implement the method, for example an older server (UNIMPLEMENTED)."""

    default_code = grpc.StatusCode.UNIMPLEMENTED


class InternalError(ChatmemError):
    """The server failed in a way it did not expect (INTERNAL, UNKNOWN or DATA_LOSS)."""

    default_code = grpc.StatusCode.INTERNAL


_BY_CODE: dict[grpc.StatusCode, type[ChatmemError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ABORTED: ConflictError,
    grpc.StatusCode.ALREADY_EXISTS: ConflictError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.CANCELLED: RequestCancelledError,
    grpc.StatusCode.UNIMPLEMENTED: UnimplementedError,
    grpc.StatusCode.INTERNAL: InternalError,
    grpc.StatusCode.UNKNOWN: InternalError,
    grpc.StatusCode.DATA_LOSS: InternalError,
}

_DETAIL_TYPES = (error_details_pb2.BadRequest, error_details_pb2.RetryInfo, error_details_pb2.ErrorInfo)


def _unpack_details(exc: grpc.RpcError) -> tuple[Any, ...]:
    try:
        status = rpc_status.from_call(exc)
    except (ValueError, DecodeError):
        # The trailer is corrupt or disagrees with the status line (a proxy rewrote one): trust the line.
        log.debug("ignoring a grpc-status-details-bin trailer that does not match the status", exc_info=True)
        return ()
    if status is None:
        return ()
    unpacked: list[Any] = []
    for packed in status.details:
        for kind in _DETAIL_TYPES:
            if packed.Is(kind.DESCRIPTOR):
                detail = kind()
                packed.Unpack(detail)
                unpacked.append(detail)
                break
    return tuple(unpacked)


def from_grpc_error(exc: grpc.RpcError) -> ChatmemError:
    """Map a failed gRPC call to the matching ChatmemError.

    Works for ``grpc.aio.AioRpcError`` and for the errors of blocking stubs. Rich details in the
    ``grpc-status-details-bin`` trailer are decoded: a ``BadRequest`` becomes
    ``InvalidArgumentError.violations``, a ``RetryInfo`` becomes ``retry_after`` and an ``ErrorInfo``
    becomes ``reason``, ``domain`` and ``metadata``.

    Args:
        exc: the error raised by a gRPC call.

    Returns:
        The mapped error (not raised); an unknown code maps to the ChatmemError base.
    """
    code: grpc.StatusCode = exc.code()
    message = exc.details() or code.name
    details = _unpack_details(exc)
    retry_after = None
    violations: list[FieldViolation] = []
    for d in details:
        if isinstance(d, error_details_pb2.RetryInfo):
            retry_after = d.retry_delay.seconds + d.retry_delay.nanos / 1e9
        elif isinstance(d, error_details_pb2.BadRequest):
            violations += [FieldViolation(v.field, v.description) for v in d.field_violations]
    request_id = _request_id(exc)
    cls = _BY_CODE.get(code, ChatmemError)
    if cls is InvalidArgumentError:
        return InvalidArgumentError(
            message,
            violations=tuple(violations),
            code=code,
            retry_after=retry_after,
            details=details,
            request_id=request_id,
        )
    return cls(message, code=code, retry_after=retry_after, details=details, request_id=request_id)


def _request_id(exc: grpc.RpcError) -> str | None:
    trailing = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    for key, value in trailing or ():
        if key == "x-request-id":
            return value if isinstance(value, str) else value.decode()
    return None
