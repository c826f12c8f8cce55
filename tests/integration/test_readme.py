"""The README's quickstart runs as written and prints what the README says it prints."""

from __future__ import annotations

import asyncio
import pathlib
import re
import sys

import pytest

from tests.conftest import make_settings, start_harness

pytestmark = pytest.mark.integration

ROOT = pathlib.Path(__file__).resolve().parents[2]


def documented_output() -> str:
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"python examples/quickstart\.py\n```\n\nIt prints:\n\n```text\n(.*?)```", readme, re.S)
    assert match, "the README must show the quickstart command and its output"
    return match.group(1)


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make run" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()


async def test_quickstart_prints_the_documented_output() -> None:
    h = await start_harness(make_settings())
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(ROOT / "examples" / "quickstart.py"),
            f"127.0.0.1:{h.app.port}",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        await h.close()
    assert proc.returncode == 0, err.decode()
    assert out.decode() == documented_output()
