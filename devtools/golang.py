"""The Go toolchain set up for clients/go: GOPATH mode over Debian's Go packages (no module proxy here)."""

from __future__ import annotations

import os
import pathlib
import shutil
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODULE = "github.com/chatmem/chatmem/clients/go"
GOPATH = ROOT / ".gopath"
# Debian's golang-google-grpc-dev, golang-google-protobuf-dev and golang-google-genproto-dev put their
# sources here; GOPATH mode builds against them as they are, with no download.
DEBIAN_GOCODE = pathlib.Path("/usr/share/gocode")


def package_dir() -> pathlib.Path:
    """Return where the module appears inside the GOPATH (a symlink to clients/go)."""
    return GOPATH / "src" / MODULE


def setup() -> None:
    """Link clients/go into .gopath/src so that GOPATH mode finds it under its import path."""
    link = package_dir()
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink():
        link.symlink_to(ROOT / "clients" / "go")


def env() -> dict[str, str]:
    """Return the environment `go build` / `go test` need for clients/go in GOPATH mode."""
    setup()
    return {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": f"{GOPATH}{os.pathsep}{DEBIAN_GOCODE}",
        "GOFLAGS": "",
        "GOTOOLCHAIN": "local",
    }


def go() -> str | None:
    """Return the go binary, or None when the toolchain is not installed."""
    return shutil.which("go")


if __name__ == "__main__":
    if go() is None:
        sys.exit("golang: go is not installed (apt-get install golang-go golang-google-grpc-dev ...; see .ci/run)")
    setup()
    print(f"golang: {package_dir()} -> clients/go")
