"""Audit records of erasures and retention sweeps, on the ``chatmem.audit`` logger (ids and counts, never content)."""

from __future__ import annotations

import logging
from typing import Any

AUDIT_LOGGER = "chatmem.audit"


def record(action: str, **fields: Any) -> None:
    """Log one audit record at INFO on ``chatmem.audit``.

    Each field is a structured attribute of the log record (``extra``) and is also written into the
    message as ``key=value``, so plain-text logs carry it too. Callers pass ids, counts and times only.

    Args:
        action: what was done, e.g. ``delete_user`` or ``retention_sweep``.
        **fields: the record's fields (workspace_id, user_id, counts, cutoff, request_id, ...).
    """
    text = " ".join(f"{k}={v}" for k, v in fields.items())
    logging.getLogger(AUDIT_LOGGER).info("%s %s", action, text, extra={"action": action, **fields})
