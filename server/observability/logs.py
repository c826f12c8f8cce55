"""Log configuration: text or JSON lines (LOG_FORMAT), each carrying the request id of the RPC that emitted it."""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Any, TextIO

from server.observability.context import request_id_var

# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is logged as a field.
_STANDARD = frozenset(
    {
        *vars(logging.LogRecord("", 0, "", 0, "", None, None)),
        "message",
        "asctime",
        "request_id",
        "taskName",
    }
)


class RequestIdFilter(logging.Filter):
    """Stamp each record with the request id of the RPC being served ("-" outside one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Add ``record.request_id``; never drops a record."""
        if not getattr(record, "request_id", ""):
            record.request_id = request_id_var.get() or "-"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, request_id, the ``extra`` fields, exc.

    Args:
        static: fields added to every line (e.g. the worker's index).
    """

    def __init__(self, static: dict[str, Any] | None = None) -> None:
        super().__init__()
        self._static = static or {}

    def format(self, record: logging.LogRecord) -> str:
        """Render a record as one line of JSON."""
        out: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            **self._static,
        }
        rid = getattr(record, "request_id", "") or request_id_var.get()
        if rid and rid != "-":
            out["request_id"] = rid
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"


def configure_logging(level: str, fmt: str, stream: TextIO | None = None, worker: int | None = None) -> logging.Handler:
    """Send every log record to ``stream`` (stderr) as text or JSON lines, replacing the root's handlers.

    Args:
        level: LOG_LEVEL, e.g. ``INFO``.
        fmt: LOG_FORMAT, ``text`` or ``json``.
        stream: where to write; stderr by default.
        worker: the GRPC__WORKERS index of this process, shown on every line.

    Returns:
        The installed handler.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(RequestIdFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter({"worker": worker} if worker is not None else None))
    else:
        prefix = f"worker{worker} " if worker is not None else ""
        handler.setFormatter(logging.Formatter(TEXT_FORMAT.replace("%(name)s", prefix + "%(name)s")))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    return handler
