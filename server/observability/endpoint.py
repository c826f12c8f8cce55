"""The /metrics HTTP endpoint on its own address (METRICS__ADDRESS), served from a thread by prometheus_client."""

from __future__ import annotations

import logging
import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

log = logging.getLogger(__name__)


def split_address(address: str) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` too) into host and port."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"METRICS__ADDRESS must be host:port, not {address!r}")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - ":9464" means every interface, as asked


class MetricsEndpoint:
    """Serves a registry over HTTP in Prometheus text format.

    Args:
        registry: what to expose.
        address: ``host:port``; port 0 picks a free one (see ``port`` after ``start``).
    """

    def __init__(self, registry: CollectorRegistry, address: str) -> None:
        self._registry = registry
        self._host, self._port = split_address(address)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (after start)."""
        return int(self._server.server_port) if self._server is not None else self._port

    def start(self) -> None:
        """Bind and serve in a daemon thread; raises OSError when the address cannot be bound."""
        self._server, self._thread = start_http_server(self._port, self._host, registry=self._registry)
        log.info("metrics on http://%s:%d/metrics", self._host, self.port)

    def stop(self) -> None:
        """Stop serving and release the port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None
