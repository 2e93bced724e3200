"""The last notable events of a running agent, for its status page.

An :class:`EventLog` is a logging handler on the ``suprsync`` logger. It keeps the
last :data:`MAX_EVENTS` records that are warnings or errors, or that a log call
marked as an event with :func:`event` (a finalization, say), and, per file, the
last such message that named the file: the reason a failing file is failing. A
message repeated (the same failure at each iteration) is kept once, with its count
and latest time.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict, deque
from dataclasses import asdict, dataclass, replace
from typing import Any

#: Events kept for the page.
MAX_EVENTS = 50
#: Files whose last reason is kept.
MAX_REASONS = 1000
#: The attributes a marked log record carries (see :func:`event`).
KIND_ATTR = "suprsync_event"
FILE_ATTR = "suprsync_file"


def event(kind: str, file: str | None = None) -> dict[str, dict[str, Any]]:
    """The ``extra`` of a log call that is a notable event of ``kind`` about ``file``.

    >>> log.error("cannot copy %s: %s", path, exc, extra=event("copy failed", path))
    """
    return {KIND_ATTR: kind, FILE_ATTR: file}


@dataclass(frozen=True)
class Event:
    """One notable event: when (last), what kind, about which file (if any), the message,
    and how many times it was logged."""

    time: float
    kind: str
    level: str
    file: str | None
    message: str
    count: int = 1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class EventLog(logging.Handler):
    """Keeps the last notable log records of the process, bounded."""

    def __init__(self, max_events: int = MAX_EVENTS, max_reasons: int = MAX_REASONS) -> None:
        super().__init__(level=logging.DEBUG)
        self._events: deque[Event] = deque(maxlen=max_events)
        self._reasons: OrderedDict[str, Event] = OrderedDict()
        self._max_reasons = max_reasons
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        kind = getattr(record, KIND_ATTR, None)
        if kind is None and record.levelno < logging.WARNING:
            return
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not break the agent's logging
            message = str(record.msg)
        file = getattr(record, FILE_ATTR, None)
        found = Event(time=record.created, kind=kind or record.levelname.lower(),
                      level=record.levelname.lower(), file=file, message=message)
        with self._guard:
            for earlier in self._events:
                if (earlier.kind, earlier.file, earlier.message) == (found.kind, file, message):
                    self._events.remove(earlier)
                    found = replace(found, count=earlier.count + 1)
                    break
            self._events.append(found)
            if file is not None:
                self._reasons.pop(file, None)
                self._reasons[file] = found
                while len(self._reasons) > self._max_reasons:
                    self._reasons.popitem(last=False)

    def events(self) -> list[Event]:
        """The kept events, newest first."""
        with self._guard:
            return list(reversed(self._events))

    def reason(self, file: str) -> Event | None:
        """The last event that named this file, if it is still kept."""
        with self._guard:
            return self._reasons.get(file)

    def install(self, logger_name: str = "suprsync") -> None:
        """Start keeping the records of this logger (and its children)."""
        logging.getLogger(logger_name).addHandler(self)

    def remove(self, logger_name: str = "suprsync") -> None:
        """Stop keeping records."""
        logging.getLogger(logger_name).removeHandler(self)
