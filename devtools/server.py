"""The chatmem server (``python -m server``) as a child process on a free loopback port."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

from devtools.ports import free_port


class ServerProcess:
    """The chatmem server as a child process (``python -m server``) on a fixed free port.

    Args:
        env: settings as environment variables (GRPC__ADDRESS is set here; GRPC__WORKERS is 1 unless given,
            since callers signal, kill and measure the one process they started).
        cwd: the working folder (so no stray .env is read).
    """

    def __init__(self, env: dict[str, str], cwd: str) -> None:
        self.port = free_port()
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("REDIS__", "DATABASE__", "GRPC__", "MEMORY__", "OUTBOX__", "LIMITS__", "AUTH__"))
        }
        self.env = {**base, "GRPC__WORKERS": "1", **env, "GRPC__ADDRESS": f"127.0.0.1:{self.port}"}
        self.cwd = cwd
        self.log_path = os.path.join(cwd, f"server-{self.port}.log")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        """The address clients dial."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the process (readiness is the caller's health check)."""
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server"], cwd=self.cwd, env=self.env, stdout=log, stderr=log
        )
        log.close()

    def kill(self) -> None:
        """SIGKILL: no shutdown, no drain."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc is None:
            return 0
        self.proc.terminate()
        try:
            code = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.proc = None
        return code

    def log(self) -> str:
        """Return the server's output so far."""
        return pathlib.Path(self.log_path).read_text(errors="replace") if os.path.exists(self.log_path) else ""
