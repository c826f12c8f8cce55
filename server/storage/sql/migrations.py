"""Versioned SQL migrations: files named NNNN_name.sql under migrations/<dialect>/, applied in order."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file."""

    version: int
    name: str
    sql: str


def load(dialect: str) -> list[Migration]:
    """Return the migrations of a dialect ("postgres" or "sqlite"), oldest first."""
    folder = resources.files("server.storage.sql") / "migrations" / dialect
    found = []
    for entry in folder.iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text()))
    found.sort(key=lambda m: m.version)
    return found
