"""The harness's own child processes: the load generators and the bare limit-grpc server."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import select
import subprocess
import sys
import time
from typing import IO, Any

from bench.config import REPO_ROOT
from devtools.ports import free_port


class Loadgen:
    """A ``python -m bench.loadgen`` child: one JSON command a line in, one JSON reply a line out."""

    def __init__(self, index: int, workdir: str) -> None:
        self.index = index
        self.log_path = os.path.join(workdir, f"loadgen-{index}.log")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bench.loadgen"],
                cwd=REPO_ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
            )
        self.buffer = b""
        self.pending = 0

    def send(self, msg: dict[str, Any]) -> None:
        """Write one command."""
        stdin: IO[bytes] | None = self.proc.stdin
        assert stdin is not None
        stdin.write((json.dumps(msg) + "\n").encode())
        stdin.flush()
        self.pending += 1

    def receive(self, timeout_s: float) -> dict[str, Any]:
        """Read one reply, raising with the process's log tail if it fails, exits or takes too long."""
        stdout: IO[bytes] | None = self.proc.stdout
        assert stdout is not None
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"load generator {self.index} did not answer in {timeout_s:.0f}s")
            ready, _, _ = select.select([stdout], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(stdout.fileno(), 1 << 20)
                if not chunk:
                    raise RuntimeError(f"load generator {self.index} exited:\n{self.log_tail()}")
                self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        self.pending -= 1
        reply: dict[str, Any] = json.loads(line)
        if not reply.get("ok"):
            raise RuntimeError(f"load generator {self.index}: {reply.get('error')}\n{reply.get('traceback', '')}")
        return reply

    def request(self, msg: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """Send a command and wait for its reply."""
        self.send(msg)
        return self.receive(timeout_s)

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the process's stderr."""
        try:
            return pathlib.Path(self.log_path).read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Ask it to close its connections (or, if it is busy with a command, terminate it); make sure it is gone."""
        if self.proc.poll() is None and self.pending:
            self.proc.terminate()
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, RuntimeError, TimeoutError, ValueError):
                self.request({"cmd": "close"}, 30)
            with contextlib.suppress(OSError):
                if self.proc.stdin:
                    self.proc.stdin.close()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class LimitGrpcProcess:
    """``python -m bench.limit_grpc`` on a free loopback port."""

    def __init__(self, workdir: str, window: int, chars: int) -> None:
        self.port = free_port()
        self.log_path = os.path.join(workdir, "limit-grpc.log")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bench.limit_grpc", "--port", str(self.port), "--messages", str(window),
                 "--chars", str(chars)],
                cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    @property
    def target(self) -> str:
        """The address clients dial."""
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        """SIGTERM and wait."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
