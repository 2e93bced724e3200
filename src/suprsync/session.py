"""The session-data dict of the run process and its counters."""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from typing import Any

COUNTER_NAMES = ("iterations", "copies", "errors_timeout", "errors_nonzero", "errors_sqlite")


class SessionData:
    """Thread-safe holder of the session data that OCS publishes.

    Keys: activity, timestamp, last_copy, archive_stats, counters.
    """

    def __init__(self, now: float,
                 on_change: Callable[[dict[str, Any], bool], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._on_change = on_change
        self._data: dict[str, Any] = {
            "activity": "idle",
            "timestamp": now,
            "last_copy": {},
            "archive_stats": {},
            "counters": {name: 0 for name in COUNTER_NAMES},
        }
        self._degraded = False

    @property
    def degraded(self) -> bool:
        """True while the catalog cannot be read or written."""
        return self._degraded

    @degraded.setter
    def degraded(self, value: bool) -> None:
        changed = value != self._degraded
        self._degraded = value
        if changed:
            self._changed()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self.snapshot(), self._degraded)

    def snapshot(self) -> dict[str, Any]:
        """A deep copy, safe to hand to another thread.

        The file list of ``last_copy`` is shared, not copied: it belongs to a copy
        step that has ended and is replaced as a whole, never changed, and it can
        hold one pair per file of a large backlog.
        """
        with self._lock:
            files = self._data["last_copy"].get("files")
            memo = {} if files is None else {id(files): files}
            return copy.deepcopy(self._data, memo)

    def set(self, key: str, value: Any) -> None:
        """Replace one top-level entry."""
        with self._lock:
            self._data[key] = value
        self._changed()

    def set_archive_stats(self, archive_name: str, stats: dict[str, Any]) -> None:
        """Store the stats of one archive."""
        with self._lock:
            self._data["archive_stats"][archive_name] = dict(stats)
        self._changed()

    def count(self, name: str, n: int = 1) -> None:
        """Add n to a counter."""
        with self._lock:
            self._data["counters"][name] += n
        self._changed()

    @property
    def counters(self) -> dict[str, int]:
        """A copy of the counters."""
        with self._lock:
            return dict(self._data["counters"])
