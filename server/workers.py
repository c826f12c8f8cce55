"""GRPC__WORKERS: N server processes on one port (SO_REUSEPORT), supervised by the parent.

Each worker is a fresh interpreter (multiprocessing "spawn"), so no gRPC state is ever forked. The
kernel spreads connections (not RPCs) over the workers, so clients need several channels to use them
all. The parent forwards SIGTERM/SIGINT, and if one worker dies it stops the others and exits non-zero.
If the parent itself is killed (SIGKILL), the kernel kills the workers too: orphans would keep serving
the port, and a restarted server would silently share it with them.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from types import FrameType

from server.config import Settings

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent(parent: int) -> None:
    """Ask the kernel for SIGKILL when the parent dies (Linux), and leave now if it already has."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # it died before the request took effect
        os._exit(1)


def port_in_use(address: str) -> bool:
    """Return True when something already listens on ``host:port`` (probed without SO_REUSEPORT).

    With SO_REUSEPORT on, gRPC would bind next to a server already running on the port and share its
    traffic; the workers check first, so that a second server fails as it does without workers.
    """
    host, _sep, port = address.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"  # noqa: S104 - ":50051" means every interface, as gRPC reads it
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR: connections of an earlier run in TIME_WAIT do not count; a listener does.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, int(port)))
        except OSError:
            return True
    return False


def _worker(settings: Settings, index: int, parent: int) -> None:
    _die_with_parent(parent)
    # Imported here: the parent never loads grpc, so forked helpers of the parent stay clean too.
    import asyncio

    from server.app import serve
    from server.observability.endpoint import split_address
    from server.observability.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format, worker=index)
    if settings.metrics.address:  # one endpoint per worker: worker i serves on the configured port + i
        host, port = split_address(settings.metrics.address)
        metrics = settings.metrics.model_copy(update={"address": f"{host}:{port + index if port else 0}"})
        settings = settings.model_copy(update={"metrics": metrics})
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(settings))
    else:
        uvloop.run(serve(settings))


def run_workers(settings: Settings) -> int:
    """Run ``settings.worker_count`` server processes until a signal; return the exit code."""
    count = settings.worker_count
    if port_in_use(settings.grpc.address):
        log.error("cannot bind %s: another process listens on it", settings.grpc.address)
        return 1
    # The workers get the resolved count, so that each one knows it shares the port.
    settings = settings.model_copy(update={"grpc": settings.grpc.model_copy(update={"workers": count})})
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_worker, args=(settings, i, os.getpid()), name=f"chatmem-worker-{i}") for i in range(count)
    ]
    for proc in procs:
        proc.start()
    stopping = False

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs:
            if proc.is_alive():
                proc.terminate()  # SIGTERM: each worker drains gracefully

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    log.info("started %d workers on %s", len(procs), settings.grpc.address)
    while not stopping and all(p.is_alive() for p in procs):
        time.sleep(0.2)
    if not stopping:
        log.error("a worker exited; stopping the others")
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
    for proc in procs:
        proc.join(settings.grpc.shutdown_grace_s + 10)
    return 0 if stopping and all(p.exitcode == 0 for p in procs) else 1
