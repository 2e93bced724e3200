"""The destinations one agent ships an archive to, each with its own backoff and counters.

One of an archive's destinations is its primary: its state is the files table's
own columns. The others keep theirs in the copies table
(:mod:`suprsync.catalog.copies`). An agent may hold the primary and further
destinations, or further destinations only (another agent holds the primary).
A destination whose step failed waits out its own backoff; the others go on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .catalog.copies import Registered
from .catalog.destqueue import DestinationCopies
from .catalog.store import SupRsyncFilesManager
from .transport import Transport

log = logging.getLogger(__name__)

#: Longest pause of one destination after consecutive failed steps (seconds).
MAX_BACKOFF = 300.0


@dataclass
class Outlet:
    """One destination of this agent: its record, its view of the catalog, its transport."""

    record: Registered
    #: The manager itself for the primary; a DestinationCopies for the others.
    catalog: Any
    transport: Transport
    failures: int = 0
    #: Monotonic time before which its steps are skipped (after failures).
    resume_at: float = 0.0
    counters: dict[str, int] = field(default_factory=lambda: {
        "copies": 0, "verified": 0, "errors": 0, "skipped_iterations": 0})
    last_copy: dict[str, Any] = field(default_factory=dict)
    #: Files here by state (verified, pending, given_up, lost), as of the stats step.
    files: dict[str, int] = field(default_factory=dict)
    #: True when its last step failed (its copies are in doubt until one succeeds).
    in_doubt: bool = False

    @property
    def name(self) -> str:
        """The destination id."""
        return self.record.name

    def due(self, now: float) -> bool:
        """True when its backoff (if any) is over."""
        return now >= self.resume_at

    def succeeded(self) -> None:
        """Its step went well: no backoff."""
        if self.failures:
            log.info("destination %s (%s) is back after %d failed step(s)", self.name,
                     self.transport.describe(), self.failures)
        self.failures, self.resume_at, self.in_doubt = 0, 0.0, False

    def failed(self, now: float, pause: float) -> float:
        """Its step failed: wait at least ``pause``, longer after each failure; the wait."""
        self.failures += 1
        self.counters["errors"] += 1
        self.in_doubt = True
        wait = max(pause, min(MAX_BACKOFF, 2.0 ** min(self.failures, 10)))
        self.resume_at = now + wait
        return wait

    def as_dict(self, now: float) -> dict[str, Any]:
        """Its entry in the session data's ``destinations``."""
        return {"url": self.record.url, "primary": self.record.primary,
                "describe": self.transport.describe(), "failures": self.failures,
                "backoff": max(0.0, self.resume_at - now), "counters": dict(self.counters),
                "last_copy": dict(self.last_copy), "files": dict(self.files)}


def make_outlets(manager: SupRsyncFilesManager, records: list[Registered],
                 transports: list[Transport]) -> list[Outlet]:
    """The outlets of an agent's destinations (records and transports in the same order)."""
    return [Outlet(rec, manager if rec.primary else DestinationCopies(manager, rec), t)
            for rec, t in zip(records, transports, strict=True)]


Clock = Callable[[], float]
