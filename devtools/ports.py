"""Free loopback ports and bounded polling, the two things every process here needs."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], object], what: str, timeout_s: float = 30.0, interval_s: float = 0.05) -> None:
    """Poll ``predicate`` until it returns something truthy.

    Args:
        predicate: called every ``interval_s``; exceptions it raises propagate.
        what: names the awaited condition in the error.
        timeout_s: how long to keep polling.
        interval_s: the pause between polls.

    Raises:
        TimeoutError: the predicate stayed falsy for ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise TimeoutError(f"{what} did not become ready in {timeout_s}s")
