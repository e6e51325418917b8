"""A small progress bar for batch loops: users done, rate, time left.

Written here rather than pulled in (tqdm) because it needs ten lines of logic
and one thing tqdm does not give for free: when stderr is not a terminal (CI
logs, a pipe) it prints one plain line per batch instead of carriage returns.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60:d}:{seconds % 60:02d}"


class ProgressBar:
    """Counts units (users) against a total; redraws in place on a terminal."""

    def __init__(self, total: int, label: str, stream: TextIO | None = None, width: int = 30,
                 enabled: bool = True, unit: str = "users", step: str = "batch") -> None:
        self.total = max(total, 0)
        self.label = label
        self.stream = stream or sys.stderr
        self.width = width
        self.enabled = enabled
        self.unit = unit
        self.step = step
        self.done = 0
        self.steps = 0
        self.started = time.monotonic()
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def advance(self, units: int, note: str = "") -> None:
        """Add ``units`` done (one batch) and redraw."""
        self.done += units
        self.steps += 1
        self._draw(note)

    def line(self, note: str = "") -> str:
        """The current state as one line of text."""
        elapsed = time.monotonic() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 and self.total > self.done else 0.0
        fraction = min(1.0, self.done / self.total) if self.total else 1.0
        filled = int(fraction * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        text = (f"{self.label} [{bar}] {self.done}/{self.total} {self.unit}, {self.step} {self.steps}, "
                f"{rate:.0f} {self.unit}/s, elapsed {_duration(elapsed)}, left {_duration(left)}")
        return f"{text} {note}".rstrip()

    def _draw(self, note: str) -> None:
        if not self.enabled:
            return
        if self._tty:
            self.stream.write("\r\033[K" + self.line(note))
        else:
            self.stream.write(self.line(note) + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End the line the bar was drawn on."""
        if self.enabled and self._tty:
            self.stream.write("\n")
            self.stream.flush()
