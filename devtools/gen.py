"""`make gen`: regenerate every client's code from protos/ with buf.gen.yaml, or check it has not drifted."""

from __future__ import annotations

import argparse
import filecmp
import importlib.metadata
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
BIN = pathlib.Path(sys.executable).parent
TS = ROOT / "clients" / "typescript"
# The generated trees, one per language; each is replaced whole, so a removed .proto leaves nothing behind.
TREES = ("clients/python/src/chatmem/v1", "clients/typescript/src/gen", "clients/go/chatmemv1")
PY_HEADER = '"""Generated from protos/chatmem/v1 by devtools/gen.py (buf.gen.yaml). Do not edit."""\n'
# Plugins that do not come from PyPI, with the version whose output is committed: a different version
# would rewrite every file, so the generator refuses it rather than drift.
GO_PLUGINS = {"protoc-gen-go": "protoc-gen-go v1.28.1", "protoc-gen-go-grpc": "protoc-gen-go-grpc 1.0"}


def _python_pins() -> dict[str, str]:
    pins: dict[str, str] = {"buf-bin": "1.75.0"}
    for line in (ROOT / "clients/python/requirements-gen.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.strip()] = version.strip()
    return pins


def check_tools() -> list[str]:
    """Return what is wrong with the installed generator tools (empty when every version is the pinned one)."""
    problems = []
    for name, wanted in _python_pins().items():
        have = importlib.metadata.version(name)
        if have != wanted:
            problems.append(f"{name} is {have}, the generator pins {wanted}")
    es_pin = json.loads((TS / "package.json").read_text())["devDependencies"]["@bufbuild/protoc-gen-es"]
    es_manifest = TS / "node_modules/@bufbuild/protoc-gen-es/package.json"
    es_have = json.loads(es_manifest.read_text())["version"] if es_manifest.exists() else "missing (npm ci)"
    if es_have != es_pin:
        problems.append(f"protoc-gen-es is {es_have}, package.json pins {es_pin}")
    for plugin, wanted in GO_PLUGINS.items():
        found = shutil.which(plugin)
        have = subprocess.run([plugin, "--version"], capture_output=True, text=True).stdout.strip() if found else ""
        if have != wanted:
            problems.append(f"{plugin} reports {have or 'nothing (apt-get install ' + plugin + ')'}, wanted {wanted}")
    return problems


def generate(out: pathlib.Path) -> None:
    """Run buf generate with buf.gen.yaml, writing every tree under out (as laid out from the repo root)."""
    path = os.pathsep.join([str(BIN), str(TS / "node_modules" / ".bin"), os.environ.get("PATH", "")])
    done = subprocess.run(
        [str(BIN / "buf"), "generate", "--template", "buf.gen.yaml", "-o", str(out)],
        cwd=ROOT,
        env={**os.environ, "PATH": path},
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"buf generate failed:\n{done.stderr}")
    py = out / TREES[0]
    (py / "__init__.py").write_text(PY_HEADER)
    (py / "py.typed").write_text("")


def _files(tree: pathlib.Path) -> list[str]:
    return sorted(str(p.relative_to(tree)) for p in tree.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def drift(fresh_root: pathlib.Path) -> list[str]:
    """Return the committed generated files that differ from a fresh generation under fresh_root."""
    out = []
    for tree in TREES:
        committed, fresh = ROOT / tree, fresh_root / tree
        names = _files(committed) if committed.exists() else []
        if names != _files(fresh):
            out.append(f"{tree}: files {sorted(set(names) ^ set(_files(fresh)))}")
            continue
        _, mismatch, errors = filecmp.cmpfiles(committed, fresh, names, shallow=False)
        out += [f"{tree}/{name}" for name in mismatch + errors]
    return out


def main() -> None:
    """Regenerate the trees in place, or with --check only report drift (exit 1)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="compare with a fresh generation, change nothing")
    args = parser.parse_args()
    problems = check_tools()
    if problems:
        sys.exit("gen: " + "; ".join(problems))
    with tempfile.TemporaryDirectory() as tmp:
        generate(pathlib.Path(tmp))
        if args.check:
            stale = drift(pathlib.Path(tmp))
            if stale:
                sys.exit("gen: drifted, run `make gen`: " + ", ".join(stale))
            print("gen: every generated tree matches the protos")
            return
        for tree in TREES:
            shutil.rmtree(ROOT / tree, ignore_errors=True)
            shutil.copytree(pathlib.Path(tmp) / tree, ROOT / tree)
            print(f"gen: wrote {tree}")


if __name__ == "__main__":
    main()
