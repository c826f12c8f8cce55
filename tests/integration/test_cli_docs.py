"""The READMEs' ``console`` blocks of the chatmem CLI run as written, against a real server, and print what they show."""

from __future__ import annotations

import asyncio
import os
import pathlib
import re
import sys

import pytest

from chatmem import MemoryClient
from tests.conftest import make_settings, start_harness

pytestmark = pytest.mark.integration

ROOT = pathlib.Path(__file__).resolve().parents[2]
READMES = [ROOT / "clients" / "python" / "README.md", ROOT / "README.md"]
DOCUMENTED_TARGET = "127.0.0.1:50051"
BLOCK = re.compile(r"```console\n(.*?)```", re.S)
# Times differ on every run; the READMEs show real ones, and both sides are compared without them.
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z")
COMMANDS = [
    *(f"chatmem threads {c} " for c in ("ls", "show", "export", "import", "watch", "fork", "truncate", "rm")),
    *(f"chatmem prefs {c} " for c in ("get", "set", "rm")),
]


def blocks() -> list[tuple[str, str]]:
    return [(str(path.relative_to(ROOT)), b) for path in READMES for b in BLOCK.findall(path.read_text())]


def split(block: str) -> tuple[str, str]:
    """Return the block's commands as a script and the output it shows."""
    commands = [line[2:] for line in block.splitlines() if line.startswith("$ ")]
    shown = "".join(line + "\n" for line in block.splitlines() if not line.startswith("$ "))
    return "\n".join(commands) + "\n", shown


def test_every_command_has_an_example_in_both_readmes() -> None:
    for path in READMES:
        shown = "\n".join(BLOCK.findall(path.read_text()))
        missing = [c.strip() for c in COMMANDS if f"$ {c}" not in shown and f"| {c}" not in shown]
        assert not missing, (path.name, missing)


@pytest.mark.parametrize(("readme", "block"), blocks(), ids=lambda v: v.split("\n")[0][:50])
async def test_readme_console_block_prints_what_it_shows(readme: str, block: str, tmp_path: pathlib.Path) -> None:
    if "chatmem threads watch" in block and not hasattr(MemoryClient, "watch"):
        pytest.skip("needs MemoryClient.watch (WatchThread, chatmem/_watch.py, built on another branch of issue #15)")
    script, expected = split(block)
    h = await start_harness(make_settings())
    try:
        target = f"127.0.0.1:{h.app.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHATMEM_")}
        # The console script of the venv running the tests comes first, as after `make install`.
        env |= {"CHATMEM_TARGET": target, "PATH": f"{pathlib.Path(sys.executable).parent}:{env.get('PATH', '')}"}
        proc = await asyncio.create_subprocess_exec(
            "bash", "-c", script.replace(DOCUMENTED_TARGET, target), cwd=tmp_path, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
    finally:
        await h.close()
    assert TIME.sub("<time>", out.decode()) == TIME.sub("<time>", expected), readme
