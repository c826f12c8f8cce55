"""A real redis-server child process on a free loopback port, that the fault tests can kill, pause and restart."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
from collections.abc import Sequence

from devtools.ports import free_port, wait_for


class RedisExitedError(RuntimeError):
    """A redis-server process ended before it answered."""


class RedisProcess:
    """A redis-server child process.

    Args:
        appendonly: turn on AOF (with appendfsync always) so that a kill -9 loses nothing acknowledged.
        tls: (cert file, key file, CA file): serve TLS only (``rediss://``) on the port.
        tls_client: (cert file, key file) of a client certificate: require client certificates
            (``tls-auth-clients yes``); ping() presents this one.
        port: the port to serve; a free one when not given.
        extra_args: more ``--name value`` arguments for redis-server (e.g. the cluster settings).
        binary: the server binary; ``redis-server`` from PATH when not given.
    """

    def __init__(
        self,
        *,
        appendonly: bool = False,
        tls: tuple[str, str, str] | None = None,
        tls_client: tuple[str, str] | None = None,
        port: int | None = None,
        extra_args: Sequence[str] = (),
        binary: str | None = None,
    ) -> None:
        binary = binary or shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.binary = binary
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="chatmem-redis-")
        self.appendonly = appendonly
        self.tls = tls
        self.tls_client = tls_client
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The redis:// (or, with TLS, rediss://) URL of this server."""
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        """True while the child process exists (it may be paused)."""
        return self.proc is not None and self.proc.poll() is None

    def args(self) -> list[str]:
        """Return the command line start() runs."""
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
        return args + self.extra_args

    def start(self) -> None:
        """Start (or start again) and wait until it answers PING."""
        self.proc = subprocess.Popen(self.args(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._answers, f"redis-server on port {self.port}")

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            # It exited (a port taken meanwhile by another process, say): no point waiting for it.
            log = os.path.join(self.dir, "redis.log")
            tail = open(log).read()[-500:] if os.path.exists(log) else ""  # noqa: SIM115
            raise RedisExitedError(f"redis-server on port {self.port} exited with {self.proc.returncode}: {tail}")
        return self.ping()

    def restart(self) -> None:
        """Stop the server if it runs (resuming it first if paused), then start it on the same port and folder."""
        self.stop()
        self.start()

    def ping(self) -> bool:
        """Return True if the server answers PING."""
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
