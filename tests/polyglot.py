"""Running the TypeScript and Go clients' suites and interop programs from pytest, against our servers."""

from __future__ import annotations

import asyncio
import os
import pathlib
import shutil

import pytest

from devtools import golang

ROOT = pathlib.Path(__file__).resolve().parents[1]
TS = ROOT / "clients" / "typescript"
GO = ROOT / "clients" / "go"
_built = asyncio.Lock()
_done: set[str] = set()


async def run(argv: list[str], cwd: pathlib.Path, env: dict[str, str], timeout_s: float = 240) -> tuple[int, str]:
    """Run a program to its end; return its exit code and its stdout and stderr together."""
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


def need(tool: str) -> str:
    """Return the tool's path; fail (never skip) when `make install` / .ci/run did not install it."""
    found = shutil.which(tool)
    if found is None:
        pytest.fail(f"{tool} is not installed: run .ci/run or `make install` (see README, Clients)")
    return found


async def build_typescript() -> None:
    """Compile the TypeScript client and its tests once per session (tsc into dist/)."""
    async with _built:
        if "ts" in _done:
            return
        if not (TS / "node_modules").exists():
            pytest.fail("clients/typescript/node_modules is missing: run `make install` (npm ci)")
        code, out = await run(
            [need("node"), "node_modules/typescript/bin/tsc", "-p", "tsconfig.json"], TS, dict(os.environ)
        )
        assert code == 0, out
        _done.add("ts")


async def node(args: list[str], env: dict[str, str] | None = None, timeout_s: float = 240) -> tuple[int, str]:
    """Run node in clients/typescript after building it."""
    await build_typescript()
    return await run([need("node"), *args], TS, {**os.environ, **(env or {})}, timeout_s)


async def go(args: list[str], env: dict[str, str] | None = None, timeout_s: float = 280) -> tuple[int, str]:
    """Run the go tool on the Go client in GOPATH mode (Debian's grpc and protobuf packages)."""
    need("go")
    # PWD keeps the symlinked path: go resolves the package from it, and the real path is outside GOPATH.
    where = golang.package_dir()
    return await run(["go", *args], where, {**golang.env(), "PWD": str(where), **(env or {})}, timeout_s)


async def go_interop(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run clients/go/cmd/chatmem-interop (built once per session into .gopath/bin)."""
    binary = golang.GOPATH / "bin" / "chatmem-interop"
    async with _built:
        if "go-interop" not in _done:
            code, out = await go(["build", "-o", str(binary), "./cmd/chatmem-interop"])
            assert code == 0, out
            _done.add("go-interop")
    return await run([str(binary), *args], ROOT, {**os.environ, **env})
