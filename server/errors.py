"""Domain errors that any layer may raise, and their google.rpc.Status form (no grpc import here)."""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2


class ChatmemError(Exception):
    """Base of every error the server reports to a caller with a specific status code."""

    code: int = code_pb2.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def details(self) -> list[any_pb2.Any]:
        """Return the google.rpc detail messages that go with the status."""
        return []

    def to_status(self) -> status_pb2.Status:
        """Return the rich google.rpc.Status for this error."""
        return status_pb2.Status(code=self.code, message=self.message, details=self.details())


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad field of a request: its path (e.g. ``messages[2].role``) and what is wrong."""

    field: str
    description: str


MAX_REPORTED_VIOLATIONS = 20  # the status travels in a trailer, which clients cap at 8-16 KiB


class InvalidArgumentError(ChatmemError):
    """The request is malformed; carries a google.rpc.BadRequest with the offending fields."""

    code = code_pb2.INVALID_ARGUMENT

    def __init__(self, violations: list[FieldViolation]) -> None:
        first = violations[0]
        more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
        super().__init__(f"invalid {first.field}: {first.description}{more}")
        self.violations = violations[:MAX_REPORTED_VIOLATIONS]

    @classmethod
    def single(cls, field_path: str, description: str) -> InvalidArgumentError:
        """Build the error for one bad field."""
        return cls([FieldViolation(field_path, description)])

    def details(self) -> list[any_pb2.Any]:
        """Return one BadRequest detail listing every violation."""
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in self.violations
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad)
        return [packed]


class NotFoundError(ChatmemError):
    """The named resource does not exist."""

    code = code_pb2.NOT_FOUND


class AlreadyExistsError(ChatmemError):
    """The request would create something that exists (a message id already used in the thread).

    Args:
        field: the request field that names it, for example ``messages[1].message_id``.
        message: what exists.
    """

    code = code_pb2.ALREADY_EXISTS

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field

    @classmethod
    def message_id(cls, index: int, message_id: str, thread_id: str) -> AlreadyExistsError:
        """Build the error for an appended message whose id the thread already holds."""
        return cls(f"messages[{index}].message_id", f"message id {message_id!r} already exists in thread {thread_id!r}")

    def details(self) -> list[any_pb2.Any]:
        """Return a BadRequest naming the field, so that clients find it as they find invalid ones."""
        packed = any_pb2.Any()
        packed.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=self.field, description=self.message)
                ]
            )
        )
        return [packed]


class AbortedError(ChatmemError):
    """An optimistic-concurrency check failed (expected_last_seq did not match)."""

    code = code_pb2.ABORTED


class FailedPreconditionError(ChatmemError):
    """The thread is not in a state the request needs (for example compacting past its last seq)."""

    code = code_pb2.FAILED_PRECONDITION


class UnavailableError(ChatmemError):
    """A tier the request needs is down; the caller may retry later."""

    code = code_pb2.UNAVAILABLE

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def details(self) -> list[any_pb2.Any]:
        """Return a RetryInfo detail so that clients back off."""
        return [_retry_info(self.retry_after_s)]


class ResourceExhaustedError(ChatmemError):
    """A limit was hit (for example the in-flight cap)."""

    code = code_pb2.RESOURCE_EXHAUSTED


def _retry_info(retry_after_s: float) -> any_pb2.Any:
    delay = duration_pb2.Duration()
    delay.FromMilliseconds(max(1, int(retry_after_s * 1000)))
    packed = any_pb2.Any()
    packed.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    return packed


class QuotaExceededError(ResourceExhaustedError):
    """A quota or admission limit refused the request; carries RetryInfo so that clients back off."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def details(self) -> list[any_pb2.Any]:
        """Return a RetryInfo detail with the time until the request could succeed."""
        return [_retry_info(self.retry_after_s)]


class UnauthenticatedError(ChatmemError):
    """No credential, or one that is unknown, revoked, expired or malformed."""

    code = code_pb2.UNAUTHENTICATED


class PermissionDeniedError(ChatmemError):
    """The credential is valid but does not allow this request (workspace or role)."""

    code = code_pb2.PERMISSION_DENIED
