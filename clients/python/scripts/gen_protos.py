"""Generate the Python protobuf and gRPC code for chatmem.v1 (the one generator; never edit its output)."""

from __future__ import annotations

import argparse
import importlib.metadata
import pathlib
import shutil
import subprocess
import sys
import tempfile

CLIENT_ROOT = pathlib.Path(__file__).resolve().parent.parent
REPO_ROOT = CLIENT_ROOT.parent.parent
PROTO_ROOT = REPO_ROOT / "protos"
OUT_PACKAGE = pathlib.PurePosixPath("chatmem/v1")
PINS_FILE = CLIENT_ROOT / "requirements-gen.txt"
HEADER = '"""Generated from protos/chatmem/v1 by clients/python/scripts/gen_protos.py. Do not edit."""\n'


def read_pins() -> dict[str, str]:
    """Return {distribution: version} from requirements-gen.txt."""
    pins: dict[str, str] = {}
    for line in PINS_FILE.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.strip()] = version.strip()
    return pins


def check_pins() -> None:
    """Fail unless the installed generator tools are exactly the pinned versions."""
    for name, wanted in read_pins().items():
        have = importlib.metadata.version(name)
        if have != wanted:
            sys.exit(f"gen_protos: {name} is {have}, but {PINS_FILE.name} pins {wanted}")


def generate(out_dir: pathlib.Path) -> None:
    """Run protoc with the grpc and mypy plugins, writing the package under out_dir."""
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / OUT_PACKAGE).glob("*.proto"))
    plugin_dir = pathlib.Path(sys.executable).parent
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--plugin=protoc-gen-mypy={plugin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={plugin_dir / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *protos,
    ]
    subprocess.run(cmd, check=True, cwd=PROTO_ROOT)
    (out_dir / OUT_PACKAGE / "__init__.py").write_text(HEADER)
    (out_dir / OUT_PACKAGE / "py.typed").write_text("")


def main() -> None:
    """Regenerate src/chatmem/v1, or write it to --out for the drift test."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=pathlib.Path, help="write here instead of src/ (for drift checks)")
    args = parser.parse_args()
    check_pins()
    if args.out is not None:
        generate(args.out)
        return
    target = CLIENT_ROOT / "src" / OUT_PACKAGE
    with tempfile.TemporaryDirectory() as tmp:
        generate(pathlib.Path(tmp))
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(pathlib.Path(tmp) / OUT_PACKAGE, target)
    print(f"gen_protos: wrote {target.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    main()
