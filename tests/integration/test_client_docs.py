"""The client README's examples and the examples/ scripts run as written and print what the README says."""

from __future__ import annotations

import asyncio
import pathlib
import re
import sys

import pytest

from devtools.ports import free_port
from tests.conftest import make_settings, start_harness

pytestmark = pytest.mark.integration

ROOT = pathlib.Path(__file__).resolve().parents[2]
README = ROOT / "clients" / "python" / "README.md"
# The root README's Python examples (its client section) are held to the same rule as the client README's.
READMES = [README, ROOT / "README.md"]
DOCUMENTED_TARGET = "127.0.0.1:50051"
SNIPPET = re.compile(r"```python\n(.*?)```\n\nIt prints:\n\n```text\n(.*?)```", re.S)
EXAMPLE = re.compile(r"```sh\n\.venv/bin/python (examples/\w+\.py)\n```\n\nIt prints:\n\n```text\n(.*?)```", re.S)


def snippets() -> list[tuple[str, str, str]]:
    return [
        (str(path.relative_to(ROOT)), code, out) for path in READMES for code, out in SNIPPET.findall(path.read_text())
    ]


def examples() -> list[tuple[str, str]]:
    return EXAMPLE.findall(README.read_text())


async def run(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def test_every_python_block_of_the_readmes_is_checked_and_every_example_is_shown() -> None:
    for path in READMES:
        assert path.read_text().count("```python\n") == len(SNIPPET.findall(path.read_text())), path
    assert len(SNIPPET.findall(README.read_text())) >= 5
    shown = {path for path, _ in examples()}
    assert shown == {"examples/agent_loop.py", "examples/stream_long_thread.py", "examples/preferences.py"}


@pytest.mark.parametrize(("readme", "code", "expected"), snippets(), ids=lambda v: v.split("\n")[0][:40])
async def test_readme_snippet_prints_what_the_readme_shows(readme: str, code: str, expected: str) -> None:
    h = await start_harness(make_settings())
    try:
        assert DOCUMENTED_TARGET in code
        status, out, err = await run("-c", code.replace(DOCUMENTED_TARGET, f"127.0.0.1:{h.app.port}"))
    finally:
        await h.close()
    assert status == 0, err
    assert out == expected


@pytest.mark.parametrize(("path", "expected"), examples(), ids=lambda v: v.split("/")[-1][:40])
async def test_example_prints_what_the_readme_shows(path: str, expected: str) -> None:
    h = await start_harness(make_settings())
    try:
        first = await run(path, f"127.0.0.1:{h.app.port}")
        again = await run(path, f"127.0.0.1:{h.app.port}")
    finally:
        await h.close()
    assert first[0] == 0, first[2]
    assert first[1] == expected
    assert again[1] == expected, "each example starts fresh, so a second run prints the same"


async def test_agent_loop_runs_stateless_when_the_server_is_down() -> None:
    status, out, err = await run("examples/agent_loop.py", f"127.0.0.1:{free_port()}")
    assert status == 0, err
    assert out.startswith("(memory is down: UnavailableError)\n")
    assert "assistant: I don't know your name yet." in out
    assert out.endswith("--- context for the next turn ---\n\n")
    assert err.count("chatmem unreachable") == 7, "each invoking() and invoked() warns"
