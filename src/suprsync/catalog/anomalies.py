"""Timecode-dir anomalies: dirs dated in the future, late files, a clock in doubt.

The rules that find them are pure queries; :class:`DirWatch` remembers what was
already logged, so that each anomaly is logged once and not every iteration.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from .lateness import LateFile, find_late_files
from .quarantine import TIME_OK
from .schema import SupRsyncFile, TimecodeDir

log = logging.getLogger(__name__)

F = SupRsyncFile
TD = TimecodeDir

#: A dir more than this many timecodes after now's is dated in the future.
FUTURE_TIMECODES = 1
#: Seconds the newest row of an archive may lie ahead of now before the clock is in doubt.
CLOCK_TOLERANCE = 300.0


def timecode_at(unix_time: float) -> int:
    """The timecode of a unix time (its first five digits)."""
    return int(unix_time // 1e5)


def future_limit(now: float) -> int:
    """The last timecode that is not in the future at ``now``."""
    return timecode_at(now) + FUTURE_TIMECODES


def future_dirs(session: Session, archive_name: str, now: float) -> list[int]:
    """Timecode dirs of the archive dated more than a timecode after now's."""
    return list(session.scalars(
        select(TD.timecode).where(TD.archive_name == archive_name,
                                  TD.timecode > future_limit(now))
        .distinct().order_by(TD.timecode)))


def newest_timestamp(session: Session, archive_name: str) -> float | None:
    """The highest row timestamp of the archive; rows whose timestamp is no time are
    quarantined and left out."""
    # The first good value from the end of the (archive, timestamp) index: max() with
    # a condition would read the whole archive.
    value = session.scalar(select(F.timestamp).where(F.archive_name == archive_name, TIME_OK)
                           .order_by(F.timestamp.desc()).limit(1))
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def rows_ahead_of(newest: float | None, now: float) -> bool:
    """True when rows were registered well after ``now``: the clock went back."""
    return newest is not None and newest > now + CLOCK_TOLERANCE


@dataclass
class DirWatch:
    """What was noticed about one archive's dirs, and what was logged already."""

    archive_name: str
    #: Dirs dated in the future at the last look.
    future: list[int] = field(default_factory=list)
    #: Late files not yet described by a further finalization file, by file id.
    late: dict[int, LateFile] = field(default_factory=dict)
    #: Late files found since this watch began.
    late_found: int = 0
    #: True while rows registered after now make the clock doubtful.
    rows_ahead: bool = False
    #: Highest file id scanned for late files (None: never scanned).
    scanned_up_to: int | None = None
    #: The count of idmarks when scanned_up_to was read.
    scanned_mark: str | None = None
    #: True when no row below scanned_up_to can commit after the scan (the next scan
    #: starts there, not RESCAN_IDS below).
    settled: bool = False
    #: True while registrations in flight keep the scan from ending at a settled id
    #: (logged once).
    unsettled_logged: bool = False
    #: Dirs whose late files were all described since the state was last kept.
    cleared: set[int] = field(default_factory=set)
    #: Further finalization files written for late files since this watch began.
    supplements_written: int = 0
    _logged_future: set[int] = field(default_factory=set)

    def saw_future(self, timecodes: list[int], now: float) -> None:
        """Record the dirs dated in the future; log each one once."""
        self.future = list(timecodes)
        for tc in timecodes:
            if tc not in self._logged_future:
                self._logged_future.add(tc)
                log.warning("timecode dir %s of archive %s is dated in the future (now's "
                            "timecode is %s): it completes no dir and is not completed "
                            "until its time comes; a typo or a wrong clock wrote it",
                            tc, self.archive_name, timecode_at(now))

    def saw_late(self, files: list[LateFile]) -> None:
        """Record late files; log each new one once."""
        for f in files:
            if f.file_id in self.late:
                continue
            self.late[f.file_id] = f
            self.late_found += 1
            log.warning("file %s (id %d, %s) was registered into timecode dir %s of archive "
                        "%s after its finalization file was written; a further "
                        "finalization file will describe it once it is verified",
                        f.local_path, f.file_id, f.remote_path, f.timecode,
                        self.archive_name)

    def described(self, timecode: int, up_to: int) -> None:
        """A further finalization file of this dir describes its rows up to this id."""
        for file_id, f in list(self.late.items()):
            if f.timecode == timecode and file_id <= up_to:
                del self.late[file_id]
        if not any(f.timecode == timecode for f in self.late.values()):
            self.cleared.add(timecode)

    def saw_clock(self, newest: float | None, now: float) -> bool:
        """Record whether rows lie ahead of now; log once per episode. True while they do."""
        ahead = rows_ahead_of(newest, now)
        if ahead and not self.rows_ahead:
            log.warning("the clock looks wrong: archive %s has rows registered at %.0f, "
                        "%.0f s after now (%.0f); no timecode dir is completed by age and "
                        "no finalization file is written until the clock is consistent",
                        self.archive_name, newest, (newest or 0) - now, now)
        elif self.rows_ahead and not ahead:
            log.info("the clock is consistent with the rows of archive %s again",
                     self.archive_name)
        self.rows_ahead = ahead
        return ahead


def catalog_anomalies(session: Session, archive_name: str, now: float) -> dict[str, Any]:
    """The anomalies of an archive as the catalog shows them, for ``status`` and ``stats``.

    ``future_timecode_dirs``: dirs dated more than a timecode after now's;
    ``late_files``: files of finalized dirs that no finalization file describes;
    ``rows_ahead_of_clock``: the newest row is well after now.
    """
    return {
        "future_timecode_dirs": future_dirs(session, archive_name, now),
        "late_files": [f.as_dict() for f in find_late_files(session, archive_name)],
        "rows_ahead_of_clock": rows_ahead_of(newest_timestamp(session, archive_name), now),
    }
