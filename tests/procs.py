"""Real redis-server and PostgreSQL processes on free loopback ports, for tests and benchmarks.

PostgreSQL refuses to run as root, so when the tests run as root its processes run as the
``postgres`` user. Each process can be stopped, killed (SIGKILL), paused (SIGSTOP) and started
again on the same port and data directory, which is what the fault tests need.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pathlib
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from typing import Any


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(predicate: Any, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise TimeoutError(f"{what} did not become ready in {timeout_s}s")


class RedisProcess:
    """A redis-server child process.

    Args:
        appendonly: turn on AOF (with appendfsync always) so that a kill -9 loses nothing acknowledged.
        tls: (cert file, key file, CA file): serve TLS only (``rediss://``) on the port.
        tls_client: (cert file, key file) of a client certificate: require client certificates
            (``tls-auth-clients yes``); ping() presents this one.
    """

    def __init__(
        self,
        *,
        appendonly: bool = False,
        tls: tuple[str, str, str] | None = None,
        tls_client: tuple[str, str] | None = None,
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.binary = binary
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="chatmem-redis-")
        self.appendonly = appendonly
        self.tls = tls
        self.tls_client = tls_client
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The redis:// (or, with TLS, rediss://) URL of this server."""
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start (or start again) and wait until it answers PING."""
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
            "--save", "", "--daemonize", "no", "--logfile", os.path.join(self.dir, "redis.log"),
        ]  # fmt: skip
        if self.appendonly:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        if self.tls:
            cert, key, ca = self.tls
            args[1:3] = ["--port", "0", "--tls-port", str(self.port)]
            args += ["--tls-cert-file", cert, "--tls-key-file", key, "--tls-ca-cert-file", ca,
                     "--tls-auth-clients", "yes" if self.tls_client else "no"]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(self.ping, f"redis-server on port {self.port}")

    def ping(self) -> bool:
        """True if the server answers PING."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as raw:
                if not self.tls:
                    raw.sendall(b"PING\r\n")
                    return raw.recv(16).startswith(b"+PONG")
                context = ssl.create_default_context(cafile=self.tls[2])
                if self.tls_client:
                    context.load_cert_chain(*self.tls_client)
                with context.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                    s.sendall(b"PING\r\n")
                    return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL the server and reap it."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def pause(self) -> None:
        """SIGSTOP: the server holds its connections but answers nothing."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after pause()."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Stop the server (resuming it first if paused)."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def close(self) -> None:
        """Stop and remove the data directory."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _pg_bindir() -> pathlib.Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    if found:
        return pathlib.Path(found[-1]).parent
    binary = shutil.which("postgres")
    if binary is None:
        raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
    return pathlib.Path(binary).resolve().parent


class PostgresProcess:
    """A PostgreSQL server child process with its own data directory (run as ``postgres`` under root).

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
        _wait(self.ready, f"PostgreSQL on port {self.port}")

    def ready(self) -> bool:
        """True if pg_isready says the server accepts connections."""
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
            _wait(lambda: not self._port_open(), "killed postgres to release its port", 30)

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


class ServerProcess:
    """The chatmem server as a child process (``python -m server``) on a fixed free port.

    Args:
        env: settings as environment variables (GRPC__ADDRESS is set here).
        cwd: the working folder (so no stray .env is read).
    """

    def __init__(self, env: dict[str, str], cwd: str) -> None:
        self.port = free_port()
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("REDIS__", "DATABASE__", "GRPC__", "MEMORY__", "OUTBOX__", "LIMITS__", "AUTH__"))
        }
        self.env = {**base, **env, "GRPC__ADDRESS": f"127.0.0.1:{self.port}"}
        self.cwd = cwd
        self.log_path = os.path.join(cwd, f"server-{self.port}.log")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        """The address clients dial."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the process (readiness is the caller's health check)."""
        import sys

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
        """The server's output so far."""
        return pathlib.Path(self.log_path).read_text(errors="replace") if os.path.exists(self.log_path) else ""
