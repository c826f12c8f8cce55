"""Domain errors that any layer may raise, and their google.rpc.Status form (no grpc import here).

Every error class names one stable ``reason``: the ``google.rpc.ErrorInfo`` each status carries (domain
``chatmem.dev``), so that callers in any language branch on it, never on message text. A reason once
published never changes meaning; a new case gets a new subclass and reason (and a README row).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

ERROR_DOMAIN = "chatmem.dev"
REASONS: dict[str, type[ChatmemError]] = {}  # every reason and its class, filled as classes are defined


class ChatmemError(Exception):
    """Base of every error the server reports to a caller with a specific status code.

    Attributes:
        code: the google.rpc code of the status.
        reason: the ErrorInfo reason, unique to the class.
        metadata: ErrorInfo metadata of this instance (e.g. the thread id), strings only.
    """

    code: int = code_pb2.INTERNAL
    reason: str = "INTERNAL"

    def __init__(self, message: str, metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.metadata = dict(metadata or {})

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "reason" not in cls.__dict__:
            return  # a refinement for the server's own use (e.g. LookupRefusedError) shares its parent's
        owner = REASONS.setdefault(cls.reason, cls)
        if owner is not cls:
            raise TypeError(f"{cls.__name__} reuses the reason {cls.reason} of {owner.__name__}")

    def error_info(self) -> error_details_pb2.ErrorInfo:
        """Return the ErrorInfo detail: this class's reason, the chatmem domain, the instance's metadata."""
        return error_details_pb2.ErrorInfo(reason=self.reason, domain=ERROR_DOMAIN, metadata=self.metadata)

    def details(self) -> list[any_pb2.Any]:
        """Return the google.rpc detail messages that go with the status (subclasses add theirs after it)."""
        packed = any_pb2.Any()
        packed.Pack(self.error_info())
        return [packed]

    def to_status(self) -> status_pb2.Status:
        """Return the rich google.rpc.Status for this error."""
        return status_pb2.Status(code=self.code, message=self.message, details=self.details())


class InternalError(ChatmemError):
    """A failure the server did not expect; the log has the traceback, the caller gets no internals."""

    reason = "INTERNAL"


class DeadlineExceededError(ChatmemError):
    """The RPC's time budget ran out before the storage answered."""

    code = code_pb2.DEADLINE_EXCEEDED
    reason = "DEADLINE_EXCEEDED"


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad field of a request: its path (e.g. ``messages[2].role``) and what is wrong."""

    field: str
    description: str


MAX_REPORTED_VIOLATIONS = 20  # the status travels in a trailer, which clients cap at 8-16 KiB


class InvalidArgumentError(ChatmemError):
    """The request is malformed; carries a google.rpc.BadRequest with the offending fields."""

    code = code_pb2.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"

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
        return [*super().details(), packed]


class NotFoundError(ChatmemError):
    """The named resource does not exist."""

    code = code_pb2.NOT_FOUND
    reason = "NOT_FOUND"


class ThreadNotFoundError(NotFoundError):
    """The thread does not exist (or was deleted) in the caller's workspace."""

    reason = "THREAD_NOT_FOUND"

    def __init__(self, thread_id: str) -> None:
        super().__init__(f"thread {thread_id!r} not found", {"thread_id": thread_id})


class AlreadyExistsError(ChatmemError):
    """The request would create something that exists; carries a BadRequest naming the field.

    Args:
        field: the request field that names it, for example ``messages[1].message_id``.
        message: what exists.
    """

    code = code_pb2.ALREADY_EXISTS
    reason = "ALREADY_EXISTS"

    def __init__(self, field: str, message: str, metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message, metadata)
        self.field = field

    def details(self) -> list[any_pb2.Any]:
        """Return ErrorInfo and a BadRequest naming the field, so that clients find it as they find invalid ones."""
        packed = any_pb2.Any()
        packed.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=self.field, description=self.message)
                ]
            )
        )
        return [*super().details(), packed]


class MessageIdExistsError(AlreadyExistsError):
    """An appended message's id is one the thread already holds."""

    reason = "MESSAGE_ID_EXISTS"

    def __init__(self, index: int, message_id: str, thread_id: str) -> None:
        super().__init__(
            f"messages[{index}].message_id",
            f"message id {message_id!r} already exists in thread {thread_id!r}",
            {"thread_id": thread_id, "message_id": message_id},
        )


class ThreadExistsError(AlreadyExistsError):
    """ForkThread's new thread exists already (and is not this fork)."""

    reason = "THREAD_EXISTS"

    def __init__(self, thread_id: str) -> None:
        super().__init__("new_thread_id", f"thread {thread_id!r} already exists", {"thread_id": thread_id})


class AbortedError(ChatmemError):
    """An optimistic-concurrency check failed (expected_last_seq did not match)."""

    code = code_pb2.ABORTED
    reason = "LAST_SEQ_MISMATCH"


class FailedPreconditionError(ChatmemError):
    """The thread is not in a state the request needs."""

    code = code_pb2.FAILED_PRECONDITION
    reason = "FAILED_PRECONDITION"


class CompactionRangeError(FailedPreconditionError):
    """A CompactThread through_seq past the thread's last seq, or below its previous compaction."""

    reason = "COMPACTION_OUT_OF_RANGE"


class UnavailableError(ChatmemError):
    """A tier the request needs is down; the caller may retry later."""

    code = code_pb2.UNAVAILABLE
    reason = "UNAVAILABLE"

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def details(self) -> list[any_pb2.Any]:
        """Return a RetryInfo detail so that clients back off."""
        return [*super().details(), _retry_info(self.retry_after_s)]


class StoreDownError(UnavailableError):
    """The durable store (PostgreSQL or SQLite) cannot answer, and the request needs it."""

    reason = "STORE_UNAVAILABLE"


class CacheDownError(UnavailableError):
    """Redis is needed for this thread (other replicas use it again) but this replica cannot use it."""

    reason = "CACHE_UNAVAILABLE"


class BacklogFullError(UnavailableError):
    """write_behind: the thread has OUTBOX__MAX_UNFLUSHED_PER_THREAD messages waiting for the store."""

    reason = "THREAD_BACKLOG_FULL"


class ResourceExhaustedError(ChatmemError):
    """A limit was hit (for example the in-flight cap)."""

    code = code_pb2.RESOURCE_EXHAUSTED
    reason = "RESOURCE_EXHAUSTED"


def _retry_info(retry_after_s: float) -> any_pb2.Any:
    delay = duration_pb2.Duration()
    delay.FromMilliseconds(max(1, int(retry_after_s * 1000)))
    packed = any_pb2.Any()
    packed.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    return packed


class QuotaExceededError(ResourceExhaustedError):
    """A quota or admission limit refused the request; carries RetryInfo so that clients back off."""

    reason = "QUOTA_EXCEEDED"

    def __init__(self, message: str, retry_after_s: float, metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message, metadata)
        self.retry_after_s = retry_after_s

    def details(self) -> list[any_pb2.Any]:
        """Return a RetryInfo detail with the time until the request could succeed."""
        return [*super().details(), _retry_info(self.retry_after_s)]


class AuthThrottledError(QuotaExceededError):
    """Too many failed authentications from the caller's address; it must wait."""

    reason = "TOO_MANY_AUTH_FAILURES"


class UnauthenticatedError(ChatmemError):
    """No credential, or one that is unknown, revoked, expired or malformed."""

    code = code_pb2.UNAUTHENTICATED
    reason = "UNAUTHENTICATED"


class PermissionDeniedError(ChatmemError):
    """The credential is valid but does not allow this request (workspace or role)."""

    code = code_pb2.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"
