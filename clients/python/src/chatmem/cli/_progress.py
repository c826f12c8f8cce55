"""A one-line progress indicator on stderr, drawn only when stderr is a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Counts messages and redraws ``<verb> N[/total] messages`` in place, a few times a second.

    It draws nothing unless the stream is a terminal, so logs and pipes never see carriage returns.

    Args:
        verb: what is being done, for example ``exported``.
        total: how many are expected, when known (shows a percentage).
        stream: where to draw; stderr by default.
        interval: seconds between redraws.
    """

    def __init__(self, verb: str, total: int | None = None, *, stream: TextIO | None = None, interval: float = 0.2):
        self._stream = stream or sys.stderr
        self._on = self._stream.isatty()
        self._verb = verb
        self._total = total
        self._interval = interval
        self._count = 0
        self._next = 0.0
        self._drawn = False

    @property
    def count(self) -> int:
        """How many messages have been counted."""
        return self._count

    def add(self, n: int = 1) -> None:
        """Count ``n`` more messages, redrawing when the interval has passed."""
        self._count += n
        if self._on and time.monotonic() >= self._next:
            self._draw()

    def _draw(self) -> None:
        text = f"{self._verb} {self._count:,}"
        if self._total:
            text += f"/{self._total:,} messages ({min(100, 100 * self._count // self._total)}%)"
        else:
            text += " messages"
        # \r and erase-to-end-of-line: the line shrinks cleanly when the numbers get shorter.
        self._stream.write(f"\r{text}\x1b[K")
        self._stream.flush()
        self._drawn = True
        self._next = time.monotonic() + self._interval

    def done(self) -> None:
        """Draw the final count and end the line (nothing when stderr is not a terminal)."""
        if self._on:
            self._draw()
            self._stream.write("\n")
            self._stream.flush()
