"""Roles (read < write < admin) and the explicit table of the role each chatmem RPC needs (default: admin)."""

from __future__ import annotations

import enum


class AccessRole(enum.IntEnum):
    """What a credential may do; a higher role includes every lower one."""

    READ = 1
    WRITE = 2
    ADMIN = 3

    @classmethod
    def parse(cls, name: object) -> AccessRole | None:
        """Return the role named ``read``, ``write`` or ``admin`` (any case), or None for anything else."""
        if not isinstance(name, str):
            return None
        return _BY_NAME.get(name.strip().lower())

    @property
    def label(self) -> str:
        """The lower-case name used in keys, tokens and logs."""
        return self.name.lower()


_BY_NAME = {r.name.lower(): r for r in AccessRole}

_T = "/chatmem.v1.ThreadMemoryService/"
_P = "/chatmem.v1.PreferencesService/"

METHOD_ROLES: dict[str, AccessRole] = {
    f"{_T}AppendMessages": AccessRole.WRITE,
    f"{_T}GetHistory": AccessRole.READ,
    f"{_T}ListMessages": AccessRole.READ,
    f"{_T}StreamHistory": AccessRole.READ,
    f"{_T}GetContext": AccessRole.READ,
    f"{_T}GetThread": AccessRole.READ,
    f"{_T}ListThreads": AccessRole.READ,
    f"{_T}UpdateThread": AccessRole.WRITE,
    f"{_T}DeleteThread": AccessRole.WRITE,
    f"{_T}WatchThread": AccessRole.READ,
    f"{_T}ForkThread": AccessRole.WRITE,
    f"{_T}TruncateThread": AccessRole.WRITE,
    f"{_T}CompactThread": AccessRole.WRITE,
    f"{_P}GetPreferences": AccessRole.READ,
    f"{_P}SetPreferences": AccessRole.WRITE,
    f"{_P}DeletePreferences": AccessRole.WRITE,
    "/chatmem.v1.AdminService/DeleteUser": AccessRole.ADMIN,
}
"""The role each chatmem RPC needs, by full method name."""


def required_role(method: str) -> AccessRole:
    """Return the role an RPC needs; a method missing from the table needs admin (default deny)."""
    return METHOD_ROLES.get(method, AccessRole.ADMIN)
