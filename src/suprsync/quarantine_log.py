"""Telling the operator, once per process, which rows of an archive are quarantined and why.

The selection queries leave quarantined rows out by themselves (see
catalog.quarantine); this only reports them. No iteration reads the whole
archive: each check reads the rows registered since the last one, and one chunk
of older ids, sweeping the catalog again and again from the newest id down, so
that a row spoiled after registration is found too.
"""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from .catalog.quarantine import quarantined_rows
from .catalog.schema import SupRsyncFile
from .catalog.store import SupRsyncFilesManager
from .catalog.timecode import max_file_id
from .events import event

log = logging.getLogger(__name__)

F = SupRsyncFile

#: Older ids read per check: MIN_SWEEP, or SWEEP_PER_NEW per id added since the last
#: check, at most SCAN_CHUNK. The sweep's cost follows the work of the iteration, not
#: the size of the catalog.
SCAN_CHUNK = 10_000
MIN_SWEEP = 1000
SWEEP_PER_NEW = 4
#: Rows logged one by one per process; beyond that, only how many more were found.
MAX_LINES = 1000


class QuarantineLog:
    """Logs each quarantined row of one archive once, with its id and reason."""

    def __init__(self, manager: SupRsyncFilesManager, archive_name: str, prefix: str = "",
                 chunk: int = SCAN_CHUNK, max_lines: int = MAX_LINES) -> None:
        self.manager = manager
        self.archive_name = archive_name
        self.prefix = prefix
        self.chunk = chunk
        self.max_lines = max_lines
        #: Reason last reported, per file id.
        self.reported: dict[int, str] = {}
        self._lines = 0
        self._high: int | None = None  # ids above this are new at the next check
        self._sweep = 0  # the sweep of older ids continues below this id

    def check(self) -> list[dict]:
        """Read new rows and one chunk of older ones; log what was not reported yet.

        Returns the rows reported now, as [{id, reason}].
        """
        archive = self.archive_name

        def scan(session: Session) -> tuple[int, int, list[dict]]:
            top = max_file_id(session)
            high = top if self._high is None else self._high
            sweep = self._sweep if self._high is not None else top
            if sweep <= 0:
                sweep = high  # start the sweep again from the newest row seen
            chunk = min(self.chunk, max(MIN_SWEEP, SWEEP_PER_NEW * max(0, top - high)))
            ranges = [(high, top), (max(0, sweep - chunk), sweep)]
            found: list[dict] = []
            for low, up_to in ranges:
                if up_to > low:
                    # archive_name || '': scan the id range, not the archive's index.
                    found += quarantined_rows(session, F.id > low, F.id <= up_to,
                                              F.archive_name.concat("") == archive)
            return top, max(0, sweep - chunk), found

        top, self._sweep, found = self.manager.read(scan, what="look for quarantined rows")
        self._high = max(top, self._high or 0)
        new = [r for r in found if self.reported.get(r["id"]) != r["reason"]]
        unlisted = 0
        for row in new:
            self.reported[row["id"]] = row["reason"]
            if self._lines >= self.max_lines:
                unlisted += 1
                continue
            self._lines += 1
            log.warning("%sfile id %d of archive %r is quarantined (never copied, deleted or "
                        "counted as synced until the row is fixed): %s", self.prefix,
                        row["id"], archive, row["reason"], extra=event("quarantined"))
        if unlisted:
            log.warning("%s%d more row(s) of archive %r are quarantined (not listed one by one; "
                        "suprsync status lists them)", self.prefix, unlisted, archive)
        return new
