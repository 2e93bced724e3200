"""Progress bars of the long commands, on a terminal only (never in logs or --json)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

#: Characters of the bar itself.
WIDTH = 30


class Bar:
    """One line on stderr, redrawn at most every ``every`` seconds; silent off a terminal."""

    def __init__(self, label: str, total: int | None = None, unit: str = "files",
                 out: TextIO | None = None, every: float = 0.2, enabled: bool = True) -> None:
        stream = sys.stderr if out is None else out
        self.out = stream if enabled and stream.isatty() else None
        self.label = label
        self.total = total
        self.unit = unit
        self.every = every
        self._last = 0.0
        self._shown = False

    def phase(self, label: str, total: int | None = None) -> None:
        """Start another phase of the command (listing, then hashing, say)."""
        self.label, self.total = label, total
        self.show(label, force=True)

    def update(self, done: int, force: bool = False) -> None:
        """Show ``done`` of the total."""
        if self.out is None:
            return
        if self.total:
            filled = min(WIDTH, int(WIDTH * done / self.total))
            text = (f"{self.label} [{'#' * filled}{'.' * (WIDTH - filled)}] "
                    f"{done}/{self.total} {self.unit}")
        else:
            text = f"{self.label}: {done} {self.unit}"
        self.show(text, force or (self.total is not None and done >= self.total))

    def show(self, text: str, force: bool = False) -> None:
        """Show a line of free text."""
        if self.out is None:
            return
        now = time.monotonic()
        if force or now - self._last >= self.every:
            self._last = now
            self.out.write(f"\r\x1b[K{text}")
            self.out.flush()
            self._shown = True

    def close(self) -> None:
        """End the line."""
        if self.out is not None and self._shown:
            self.out.write("\n")
            self.out.flush()
            self._shown = False

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
