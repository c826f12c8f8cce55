"""The protos are the contract: buf lint and format are clean, and the committed stubs match a fresh generation."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import pytest
import yaml

from devtools import gen

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_every_generated_tree_matches_the_generator(tmp_path: pathlib.Path) -> None:
    problems = gen.check_tools()
    assert problems == [], problems
    gen.generate(tmp_path)
    for tree in gen.TREES:
        assert any((tmp_path / tree).iterdir()), f"buf.gen.yaml wrote nothing into {tree}"
    assert gen.drift(tmp_path) == [], "regenerate with `make gen`"


def test_every_proto_declares_the_package_options_managed_mode_sets() -> None:
    """Plain protoc users need the options in the files; buf.gen.yaml's managed mode must agree with them."""
    config = yaml.safe_load((ROOT / "buf.gen.yaml").read_text())
    managed = {o["file_option"]: o["value"] for o in config["managed"]["override"]}
    assert set(managed) >= {"go_package", "java_package", "csharp_namespace"}
    for proto in sorted((ROOT / "protos" / "chatmem" / "v1").glob("*.proto")):
        text = proto.read_text()
        for option, value in managed.items():
            shown = str(value).lower() if isinstance(value, bool) else '"' + str(value).replace("\\", "\\\\") + '"'
            assert f"option {option} = {shown};" in text, (proto.name, option)


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
