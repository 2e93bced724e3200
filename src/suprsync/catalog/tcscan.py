"""The file ids already scanned for timecode dirs, kept in the catalog between processes.

Detection (``SupRsyncFilesManager.detect_timecode_dirs``) scans the rows added since
its last call and, a chunk per call, the older rows backwards. The range it has
covered, ``(low, high]``, is kept under ``timecode_dirs_scanned:<archive>`` with the
catalog's deletion mark (see filecount.py), so that a new process (``suprsync run
--once`` from cron, the original's API in a new program) goes on where the last one
stopped instead of scanning the newest rows again and never reaching the oldest. A
range that no longer fits the catalog (ids above its highest, rows deleted since, no
deletion mark to tell) is not used: the scan starts afresh.
"""

from __future__ import annotations

import json

from sqlalchemy.orm import Session

from . import filecount
from .meta import get_meta, set_meta

PREFIX = "timecode_dirs_scanned:"
#: New rows scanned after which the kept range is brought forward (a new process
#: scans at most this many rows again; fewer writes meanwhile).
STORE_STEP = 1000


def stored_range(session: Session, archive_name: str, top: int) -> tuple[int, int] | None:
    """The scanned range (low, high] kept for the archive, when it can be trusted."""
    value = get_meta(session, PREFIX + archive_name)
    if value is None:
        return None
    try:
        d = json.loads(value)
        low, high, mark = int(d["low"]), int(d["high"]), d["mark"]
    except (ValueError, TypeError, KeyError):
        return None  # another program's value, or a damaged one
    now = filecount.deletion_mark(session)
    if now is None or mark != now or not 0 <= low <= high <= top:
        return None
    return low, high


def worth_storing(kept: tuple[int, int] | None, covered: tuple[int, int]) -> bool:
    """True when the range covered now should replace the one kept in the catalog."""
    return kept is None or covered[0] < kept[0] or covered[1] - kept[1] >= STORE_STEP


def store_range(session: Session, archive_name: str, low: int, high: int) -> None:
    """Keep the scanned range (low, high] of the archive with the deletion mark now."""
    value = json.dumps({"low": low, "high": high, "mark": filecount.deletion_mark(session)})
    set_meta(session, PREFIX + archive_name, value)
