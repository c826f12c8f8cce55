"""The protos are the contract: buf lint and format are clean, and the committed stubs match a fresh generation."""

from __future__ import annotations

import filecmp
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
GENERATED = ROOT / "clients" / "python" / "src" / "chatmem" / "v1"


def test_generated_code_has_not_drifted(tmp_path: pathlib.Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "clients/python/scripts/gen_protos.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    fresh = tmp_path / "chatmem" / "v1"
    committed = sorted(p.name for p in GENERATED.iterdir() if p.name != "__pycache__")
    assert committed == sorted(p.name for p in fresh.iterdir())
    _, mismatch, errors = filecmp.cmpfiles(GENERATED, fresh, committed, shallow=False)
    assert mismatch == [] and errors == [], f"regenerate with `make gen`: {mismatch or errors}"


def _buf() -> str:
    found = shutil.which("buf", path=str(pathlib.Path(sys.executable).parent)) or shutil.which("buf")
    if found is None:
        pytest.fail("buf is missing: it comes from the dev extra (buf-bin)")
    return found


def test_buf_lint_is_clean() -> None:
    done = subprocess.run([_buf(), "lint"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_buf_format_is_clean() -> None:
    done = subprocess.run([_buf(), "format", "--diff", "--exit-code"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


# The v1 contract as buf built it from commit 076e696 (`buf build '.git#ref=076e696...' -o ...`): every
# later contract must stay wire- and source-compatible with it. An image, not a git ref, so that a
# checkout without history checks it too.
V1_CONTRACT = ROOT / "tests" / "data" / "contract-v1.binpb"


def test_buf_breaking_against_the_v1_contract_is_clean() -> None:
    done = subprocess.run([_buf(), "breaking", "--against", str(V1_CONTRACT)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
