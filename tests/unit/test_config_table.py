"""The README's configuration table names every setting, and only settings that exist."""

from __future__ import annotations

import pathlib
import re
from collections.abc import Iterator

from pydantic import BaseModel

from server.config import Settings

ROOT = pathlib.Path(__file__).resolve().parents[2]


def env_names() -> Iterator[str]:
    """Every environment name Settings reads: SECTION__FIELD for the nested sections, FIELD at the top."""
    for name, field in Settings.model_fields.items():
        section = field.annotation
        if isinstance(section, type) and issubclass(section, BaseModel):
            yield from (f"{name}__{sub}".upper() for sub in section.model_fields)
        else:
            yield name.upper()


def table_names() -> set[str]:
    """The names in the first column of the README's Configuration table."""
    section = (ROOT / "README.md").read_text().split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    return {name for cell in rows for name in re.findall(r"`([A-Z][A-Z0-9_]*)`", cell)}


def test_every_setting_is_in_the_table() -> None:
    missing = [name for name in env_names() if name not in table_names()]
    assert not missing, f"README's Configuration table misses {missing}"


def test_the_table_names_no_setting_that_does_not_exist() -> None:
    unknown = sorted(table_names() - set(env_names()))
    assert not unknown, f"README's Configuration table names settings that do not exist: {unknown}"


def test_workers_default_is_documented_as_auto() -> None:
    assert Settings.model_fields["grpc"].default.workers == "auto"
    section = (ROOT / "README.md").read_text().split("\n## Configuration\n", 1)[1]
    assert "| `GRPC__WORKERS` | `auto` |" in section
