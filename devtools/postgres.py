"""A real PostgreSQL server child process that the fault tests can kill, pause and restart on its own data."""

from __future__ import annotations

import contextlib
import glob
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from devtools.ports import free_port, wait_for


def _pg_bindir() -> pathlib.Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    if found:
        return pathlib.Path(found[-1]).parent
    binary = shutil.which("postgres")
    if binary is None:
        raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
    return pathlib.Path(binary).resolve().parent


class PostgresProcess:
    """A PostgreSQL server child process with its own data directory.

    PostgreSQL refuses to run as root, so under root it runs as the ``postgres`` user. It can be stopped,
    killed (SIGKILL, with every backend), paused (SIGSTOP) and started again on the same port and data.

    Args:
        extra_conf: more ``-c name=value`` settings (e.g. ``ssl=on``); also settable before start().
    """

    def __init__(self, extra_conf: dict[str, str] | None = None) -> None:
        self.extra_conf = dict(extra_conf or {})
        self.bindir = _pg_bindir()
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="chatmem-pg-")
        self.data = os.path.join(self.dir, "data")
        self.proc: subprocess.Popen[bytes] | None = None
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run([str(self.bindir / "initdb"), "-D", self.data, "-A", "trust", "-U", "postgres", "-E", "UTF8",
                   "--no-sync"])  # fmt: skip

    @property
    def url(self) -> str:
        """The postgresql:// URL of this server's postgres database."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def install_file(self, name: str, data: bytes, mode: int = 0o600) -> str:
        """Write a file the server may read (a certificate or key) into its folder; return the path."""
        path = os.path.join(self.dir, name)
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, mode)
        if self._as_postgres:
            shutil.chown(path, "postgres", "postgres")
        return path

    def _as_user(self, args: list[str]) -> list[str]:
        # setpriv switches user and then execs, so the pid stays PostgreSQL's own. Popen(user=...) would
        # do the same, but it forces a plain fork() of this process, and a fork of a process that runs
        # gRPC's threads can crash in the child before exec.
        if not self._as_postgres:
            return args
        return ["setpriv", "--reuid=postgres", "--regid=postgres", "--clear-groups", "--", *args]

    def _run(self, args: list[str]) -> None:
        subprocess.run(self._as_user(args), check=True, capture_output=True)

    def start(self) -> None:
        """Start (or start again) and wait until it accepts connections.

        A start right after a SIGKILL can meet the old backends still exiting; one more try covers it.
        """
        try:
            self._start_once()
        except RuntimeError:
            time.sleep(1.0)
            self._start_once()

    def _start_once(self) -> None:
        args = [
            str(self.bindir / "postgres"), "-D", self.data, "-p", str(self.port), "-k", self.dir,
            "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "full_page_writes=off",
            "-c", "max_connections=200", "-c", "shared_buffers=128MB",
        ]  # fmt: skip
        for name, value in self.extra_conf.items():
            args += ["-c", f"{name}={value}"]
        log = open(os.path.join(self.dir, "postgres.log"), "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(self._as_user(args), stdout=log, stderr=log)
        log.close()
        wait_for(self.ready, f"PostgreSQL on port {self.port}")

    def ready(self) -> bool:
        """Return True if pg_isready says the server accepts connections."""
        if self.proc is not None and self.proc.poll() is not None:
            code = self.proc.returncode
            self.proc = None
            tail = pathlib.Path(self.dir, "postgres.log").read_text(errors="replace")[-1500:]
            raise RuntimeError(f"postgres exited with {code}:\n{tail}")
        done = subprocess.run(
            [str(self.bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"],
            capture_output=True,
        )
        return done.returncode == 0

    def kill(self) -> None:
        """SIGKILL the postmaster and every backend at once, as a crash of its machine would.

        Killing only the postmaster would leave backends that can still commit on open connections
        until they notice it is gone.
        """
        if self.proc is not None:
            for pid in self._tree():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.proc.wait()
            self.proc = None
            wait_for(lambda: not self._port_open(), "killed postgres to release its port", 30)

    def _tree(self) -> list[int]:
        assert self.proc is not None
        pids = [self.proc.pid]
        for stat in glob.glob("/proc/[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = pathlib.Path(stat).read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == self.proc.pid:
                    pids.append(int(stat.split("/")[2]))
        return pids

    def pause(self) -> None:
        """SIGSTOP the postmaster and every backend: connections stay open, nothing answers."""
        for pid in self._tree():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after pause()."""
        for pid in self._tree():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def _port_open(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        """Fast shutdown (SIGINT), resuming first if paused."""
        if self.proc is not None:
            self.resume()
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def close(self) -> None:
        """Stop and remove the data directory."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
