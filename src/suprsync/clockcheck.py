"""Noticing a system clock that jumped, by comparing it with the monotonic clock.

Between two iterations the wall clock must advance as far as the monotonic clock
does. When it does not, the clock was set (by hand, by NTP stepping it, by a
wrong RTC). Timecode dirs completed by age and finalization files written with
such a time cannot be taken back, so the agent holds both until the clock has
advanced in step again for :data:`SETTLE` seconds, or until it is back where the
monotonic clock says it should be.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

#: Seconds the two clocks may disagree between iterations (NTP slews far less).
TOLERANCE = 120.0
#: Seconds of steady clock after a jump before the new time is trusted.
SETTLE = 3600.0


@dataclass
class ClockCheck:
    """Compares the wall clock with the monotonic clock at each call of :meth:`check`."""

    wall: Callable[[], float]
    monotonic: Callable[[], float]
    name: str = "suprsync"
    tolerance: float = TOLERANCE
    settle: float = SETTLE
    #: (wall, monotonic) of the last time the clock was trusted.
    _trusted: tuple[float, float] | None = None
    #: (wall, monotonic) of the previous check.
    _last: tuple[float, float] | None = None
    #: Monotonic time of the last jump while in doubt, else None.
    _jumped_at: float | None = None

    @property
    def in_doubt(self) -> bool:
        """True from a jump until the clock is consistent again."""
        return self._jumped_at is not None

    def check(self) -> bool:
        """Take a reading; True when the clock can be trusted now."""
        wall, mono = self.wall(), self.monotonic()
        last, self._last = self._last, (wall, mono)
        if last is None:
            self._trusted = (wall, mono)
            return True
        step = (wall - last[0]) - (mono - last[1])
        assert self._trusted is not None
        expected = self._trusted[0] + (mono - self._trusted[1])
        if self._jumped_at is not None and abs(wall - expected) <= self.tolerance:
            log.info("[%s] the system clock is back in step with the monotonic clock",
                     self.name)
        elif abs(step) > self.tolerance:
            if self._jumped_at is None:
                log.warning("[%s] the system clock jumped by %+.0f s since the last "
                            "iteration (wall clock against monotonic clock); no timecode "
                            "dir is completed by age and no finalization file is written "
                            "until the clock is consistent again", self.name, step)
            self._jumped_at = mono
            return False
        elif self._jumped_at is None:
            self._trusted = (wall, mono)
            return True
        elif mono - self._jumped_at >= self.settle:
            log.info("[%s] the system clock has run steadily for %.0f s since it jumped: "
                     "trusting it again", self.name, mono - self._jumped_at)
        else:
            return False
        self._jumped_at = None
        self._trusted = (wall, mono)
        return True
