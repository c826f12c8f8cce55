"""The ``chatmem-sqlite`` target: ``python -m server`` on the embedded default (SQLite file, no Redis, one worker).

Its server runs in a folder of its own, with DATABASE__URL, REDIS__* and GRPC__WORKERS unset (ServerProcess
drops them from the environment), so it opens ``./chatmem.db`` there as a fresh install would, in
write_through (PERSISTED: every append is an fsynced SQLite commit). It is preloaded with the ``base``
thread set through the API, and runs ``read`` and ``append``.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from bench.workload import CHATMEM_SQLITE
from devtools.server import ServerProcess


def start_sqlite_server(workdir: str, window: int, stack: contextlib.ExitStack) -> ServerProcess:
    """Start the embedded-default server in ``workdir``/chatmem-sqlite; it is stopped when ``stack`` closes."""
    home = os.path.join(workdir, CHATMEM_SQLITE)
    os.makedirs(home, exist_ok=True)
    env = {"MEMORY__MAX_THREAD_MESSAGES": str(window), "LOG_LEVEL": "WARNING"}
    server = ServerProcess(env, home)
    server.start()
    stack.callback(server.stop)
    return server


def sqlite_spec(address: str, redis_url: str) -> dict[str, Any]:
    """What a load generator needs for chatmem-sqlite (``redis_url`` only satisfies the chatmem target's open)."""
    return {
        "kind": "chatmem",
        "address": address,
        "redis_url": redis_url,
        "redis_prefix": "unused-sqlite:",
        "write_mode": "write_through",
        "bulk_db_url": "",
        "channels": 1,
        "preload_sets": ["base"],
    }
