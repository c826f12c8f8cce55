"""The protos are the contract: buf lint and format are clean, and the committed stubs match a fresh generation."""

from __future__ import annotations

import json
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


# The v1 contract as buf built it from commit 076e696 (`buf build '.git#ref=076e696...' -o ...`), and the
# same contract once it gained its language package options (go_package, java_package, ...; commit
# 58a0323): every later contract must stay wire-, JSON- and source-compatible with both. Images, not git
# refs, so that a checkout without history checks them too.
V1_CONTRACT = ROOT / "tests" / "data" / "contract-v1.binpb"
V1_WITH_PACKAGES = ROOT / "tests" / "data" / "contract-v1-packages.binpb"
# v1 set no package options at all (a plain `protoc --go_out` could not even run), so setting them once
# changed no client anyone had generated; against v1 only those rules are waived.
_PACKAGE_OPTION_RULES = [
    "FILE_SAME_GO_PACKAGE",
    "FILE_SAME_JAVA_PACKAGE",
    "FILE_SAME_JAVA_MULTIPLE_FILES",
    "FILE_SAME_JAVA_OUTER_CLASSNAME",
    "FILE_SAME_OBJC_CLASS_PREFIX",
    "FILE_SAME_PHP_NAMESPACE",
    "FILE_SAME_RUBY_PACKAGE",
    "FILE_SAME_CSHARP_NAMESPACE",
]


def test_buf_breaking_against_the_v1_contract_is_clean() -> None:
    config = {
        "version": "v2",
        "modules": [{"path": "protos"}],
        "breaking": {"use": ["FILE"], "except": _PACKAGE_OPTION_RULES},
    }
    done = subprocess.run(
        [_buf(), "breaking", "--against", str(V1_CONTRACT), "--config", json.dumps(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_buf_breaking_against_the_v1_contract_with_its_packages_is_clean() -> None:
    done = subprocess.run(
        [_buf(), "breaking", "--against", str(V1_WITH_PACKAGES)], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
