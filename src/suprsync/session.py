"""The session-data dict of the run process and its counters."""

from __future__ import annotations

import copy
import threading
from typing import Any

COUNTER_NAMES = ("iterations", "copies", "errors_timeout", "errors_nonzero", "errors_sqlite")


class SessionData:
    """Thread-safe holder of the session data that OCS publishes.

    Keys: activity, timestamp, last_copy, archive_stats, counters.
    """

    def __init__(self, now: float) -> None:
        self._lock = threading.Lock()
        self._data: dict[str, Any] = {
            "activity": "idle",
            "timestamp": now,
            "last_copy": {},
            "archive_stats": {},
            "counters": {name: 0 for name in COUNTER_NAMES},
        }
        self.degraded = False

    def snapshot(self) -> dict[str, Any]:
        """A deep copy, safe to hand to another thread."""
        with self._lock:
            return copy.deepcopy(self._data)

    def set(self, key: str, value: Any) -> None:
        """Replace one top-level entry."""
        with self._lock:
            self._data[key] = value

    def set_archive_stats(self, archive_name: str, stats: dict[str, Any]) -> None:
        """Store the stats of one archive."""
        with self._lock:
            self._data["archive_stats"][archive_name] = dict(stats)

    def count(self, name: str, n: int = 1) -> None:
        """Add n to a counter."""
        with self._lock:
            self._data["counters"][name] += n

    @property
    def counters(self) -> dict[str, int]:
        """A copy of the counters."""
        with self._lock:
            return dict(self._data["counters"])
