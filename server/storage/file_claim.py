"""An exclusive claim on the embedded SQLite file: the in-process window cache is exact only in its one owner."""

from __future__ import annotations

import contextlib
import fcntl
import os


class FileInUseError(RuntimeError):
    """Another process (or another server in this one) already serves the file."""


class FileClaim:
    """An exclusive ``flock`` on ``<path>.lock``, held until ``release`` or the process ends.

    The lock is advisory: it keeps a second chatmem server off the file, not other programs. The kernel
    drops it when the process dies, so a crash leaves nothing to clean up.

    Args:
        path: the SQLite file the claim covers.

    Raises:
        FileInUseError: the lock is held elsewhere.
    """

    def __init__(self, path: str) -> None:
        self.path = f"{path}.lock"
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = None
            raise FileInUseError(
                f"another chatmem server already serves {path} (it holds {self.path}); one SQLite file has "
                "one server, whose in-process window cache would otherwise serve windows another one changed"
            ) from None

    def release(self) -> None:
        """Give the file up (idempotent)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
