"""Request validation: ids, roles, sizes and pages. Nothing malformed gets past here into a key or a query.

Ids (workspace, thread, user, request) are 1 to LIMITS__MAX_ID_LENGTH characters from the safe set
letters, digits and ``_ - . : @``, starting with a letter or digit. Preference keys use the same set.
An empty workspace_id means the workspace ``default``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from server.config import LimitSettings
from server.errors import FieldViolation, InvalidArgumentError
from server.storage.models import Role

DEFAULT_WORKSPACE = "default"
MAX_SEQ = 2**62  # far beyond any thread, and far from int64 overflow in seq arithmetic
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]*")


def is_valid_id(value: str, max_length: int = 128) -> bool:
    """Tell whether ``value`` is a well-formed id."""
    return 0 < len(value) <= max_length and _ID.fullmatch(value) is not None


_ROLES = {int(r) for r in Role}


class Checker:
    """Collects field violations of one request and raises them together.

    Args:
        limits: the configured limits.
    """

    def __init__(self, limits: LimitSettings) -> None:
        self.limits = limits
        self.violations: list[FieldViolation] = []

    def fail(self, field: str, description: str) -> None:
        """Record a violation."""
        self.violations.append(FieldViolation(field, description))

    def done(self) -> None:
        """Raise InvalidArgumentError if anything was recorded."""
        if self.violations:
            raise InvalidArgumentError(self.violations)

    def ident(self, field: str, value: str, *, required: bool = True) -> str:
        """Check an id; return it."""
        if not value:
            if required:
                self.fail(field, "is required")
            return value
        if len(value) > self.limits.max_id_length:
            self.fail(field, f"is longer than {self.limits.max_id_length} characters")
        elif not _ID.fullmatch(value):
            self.fail(field, "may hold only letters, digits and _ - . : @, and must start with a letter or digit")
        return value

    def workspace(self, value: str) -> str:
        """Check a workspace id; empty means the default workspace."""
        return self.ident("workspace_id", value, required=False) or DEFAULT_WORKSPACE

    def role(self, field: str, value: int) -> None:
        """Check a role enum value."""
        if value not in _ROLES:
            self.fail(field, "must be one of ROLE_USER, ROLE_ASSISTANT, ROLE_SYSTEM, ROLE_TOOL, ROLE_DEVELOPER")

    def text(self, field: str, value: str, max_bytes: int) -> None:
        """Check a string's UTF-8 size, and that it holds no NUL (PostgreSQL text cannot store one)."""
        if len(value) > max_bytes or len(value.encode()) > max_bytes:
            self.fail(field, f"is larger than {max_bytes} bytes")
        elif "\x00" in value:
            self.fail(field, "must not contain NUL characters")

    def metadata(self, field: str, value: Mapping[str, str]) -> None:
        """Check a metadata map's entry count and total size."""
        if len(value) > self.limits.max_metadata_entries:
            self.fail(field, f"has more than {self.limits.max_metadata_entries} entries")
            return
        size = sum(len(k.encode()) + len(v.encode()) for k, v in value.items())
        if size > self.limits.max_metadata_bytes:
            self.fail(field, f"is larger than {self.limits.max_metadata_bytes} bytes")
        if any(not k for k in value):
            self.fail(field, "has an empty key")
        if any("\x00" in k or "\x00" in v for k, v in value.items()):
            self.fail(field, "must not contain NUL characters")

    def seq(self, field: str, value: int) -> None:
        """Check a seq given by a client (0 allowed)."""
        if value < 0 or value > MAX_SEQ:
            self.fail(field, f"must be between 0 and {MAX_SEQ}")

    def count(self, field: str, value: int, *, low: int, high: int) -> None:
        """Check an integer range (inclusive)."""
        if value < low or value > high:
            self.fail(field, f"must be between {low} and {high}")

    def page_size(self, value: int, default: int, maximum: int, field: str = "page_size") -> int:
        """Check a page size; 0 means the default."""
        if value < 0 or value > maximum:
            self.fail(field, f"must be between 0 and {maximum}")
            return default
        return value or default

    def keys(self, field: str, values: Iterable[str]) -> None:
        """Check preference keys."""
        for i, key in enumerate(values):
            self.ident(f"{field}[{i}]", key)
