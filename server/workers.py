"""GRPC__WORKERS: N server processes on one port (SO_REUSEPORT), supervised by the parent.

Each worker is a fresh interpreter (multiprocessing "spawn"), so no gRPC state is ever forked. The
kernel spreads connections (not RPCs) over the workers, so clients need several channels to use them
all. The parent forwards SIGTERM/SIGINT, and if one worker dies it stops the others and exits non-zero.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import time
from types import FrameType

from server.config import Settings

log = logging.getLogger(__name__)


def _worker(settings: Settings, index: int) -> None:
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
    """Run ``settings.grpc.workers`` server processes until a signal; return the exit code."""
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_worker, args=(settings, i), name=f"chatmem-worker-{i}")
        for i in range(settings.grpc.workers)
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
