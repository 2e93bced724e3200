"""Files registered into a timecode dir after a finalization file described it.

Each finalization file of a dir describes the rows of the dir up to a file id:
the first one every row below its own ``finalize_file_id``, a supplement (table
``suprsync_supplements_v0``) every row up to its ``covers_up_to``. A non-ignored
row of a finalized dir above the highest of these bounds is *late*: downstream
believes the dir complete without it. Rows under ``<tc>/suprsync/`` (finalization
files, which downstream skips) are never late.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import false, func, inspect, or_, select
from sqlalchemy.orm import Session

from ..paths import timecode_of
from .meta import get_meta, set_meta
from .quarantine import printable
from .schema import NOT_IGNORED, Supplement, SupRsyncFile, TimecodeDir

F = SupRsyncFile
TD = TimecodeDir
S = Supplement

#: Subdirectory of a timecode dir that holds finalization files.
SUPRSYNC_SUBDIR = "suprsync"
#: Ids below the last scanned one that are read again on PostgreSQL, where a row can
#: commit after rows with higher ids (sqlite hands out ids under its write lock, so
#: they become visible in order).
RESCAN_IDS = 5000
#: Meta key prefix: the file id up to which an archive's rows were scanned for late
#: files with every late one found there described since (a new process starts there).
SCAN_MARK_PREFIX = "late_files_scanned_up_to:"


@dataclass(frozen=True)
class LateFile:
    """A file of a finalized dir that no finalization file describes."""

    timecode: int
    file_id: int
    remote_path: str
    local_path: str

    def as_dict(self) -> dict[str, object]:
        """JSON form, for ``stats --json`` and ``status --json``."""
        return {"timecode": self.timecode, "file_id": self.file_id,
                "remote_path": self.remote_path, "local_path": self.local_path}


def own_file(remote_path: str, timecode: int) -> bool:
    """True for a file under ``<tc>/suprsync/`` (a finalization file)."""
    return remote_path.startswith(f"{timecode}/{SUPRSYNC_SUBDIR}/")


def has_supplements(session: Session) -> bool:
    """True when the catalog has the supplements table (read-only commands do not add it)."""
    return inspect(session.get_bind()).has_table(S.__tablename__)


def described_bounds(session: Session, archive_name: str) -> dict[int, int]:
    """Per finalized dir of the archive, the highest file id its finalization files describe.

    A dir finalized without a recorded file id (written so by another program) is left
    out: what it described is unknown.
    """
    bounds = {int(tc): int(fid) for tc, fid in session.execute(
        select(TD.timecode, func.max(TD.finalize_file_id))
        .where(TD.archive_name == archive_name, TD.finalized.is_(True),
               TD.finalize_file_id.is_not(None))
        .group_by(TD.timecode))}
    if bounds and has_supplements(session):
        for tc, up_to in session.execute(
                select(S.timecode, func.max(S.covers_up_to))
                .where(S.archive_name == archive_name).group_by(S.timecode)):
            if int(tc) in bounds:
                bounds[int(tc)] = max(bounds[int(tc)], int(up_to))
    return bounds


#: Dirs finalized within a scanned id range that get a condition of their own.
MAX_DIR_TERMS = 50


def _maybe_late(bounds: dict[int, int], low: int):  # type: ignore[no-untyped-def]
    """SQL condition that keeps every row with an id above ``low`` that may be late.

    Only rows under a finalized dir, above its bound, can be late: the others (today's
    files, a dir's files before its finalization) are left out by SQL instead of being
    read one by one. A superset: the caller still checks each row it gets.
    """
    head = func.substr(func.ltrim(F.remote_path, "/"), 1, 6)
    inside = {tc: b for tc, b in bounds.items() if b > low}
    if len(inside) > MAX_DIR_TERMS:  # a first scan: the prefix alone
        return head.in_([f"{tc}/" for tc in bounds])
    below = [f"{tc}/" for tc, b in bounds.items() if b <= low]
    return or_(*([head.in_(below)] if below else []),
               *((head == f"{tc}/") & (F.id > b) for tc, b in inside.items()),
               false())


def find_late_files(session: Session, archive_name: str, after_id: int = 0,
                    only: set[int] | None = None) -> list[LateFile]:
    """Late files of the archive with an id above after_id (of the dirs in ``only``).

    The scan is a primary-key range that reads 15 characters of the remote paths
    under finalized dirs; only the rows found late are read whole.
    """
    bounds = described_bounds(session, archive_name)
    if only is not None:
        bounds = {tc: b for tc, b in bounds.items() if tc in only}
    if not bounds:
        return []
    low = max(after_id, min(bounds.values()))
    # archive_name || '' keeps the planner on the primary-key range.
    heads = session.execute(
        select(F.id, func.substr(F.remote_path, 1, 15))
        .where(F.id > low, F.archive_name.concat("") == archive_name, NOT_IGNORED,
               _maybe_late(bounds, low))
        .execution_options(yield_per=5000))
    found: dict[int, int] = {}
    for file_id, head in heads:
        if not isinstance(head, str):
            continue
        tc = timecode_of(head)
        if tc is None or tc not in bounds or file_id <= bounds[tc] or own_file(head, tc):
            continue
        found[int(file_id)] = tc
    late: list[LateFile] = []
    ids = sorted(found)
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        for file_id, remote, local in session.execute(
                select(F.id, F.remote_path, F.local_path).where(F.id.in_(chunk))
                .order_by(F.id)):
            late.append(LateFile(found[file_id], int(file_id), str(printable(remote)),
                                 str(printable(local))))
    return late


def rescan_ids(session: Session) -> int:
    """Ids below the last scanned one to read again on this catalog."""
    return RESCAN_IDS if session.get_bind().dialect.name == "postgresql" else 0


def scan_mark(session: Session, archive_name: str, top: int) -> int:
    """Where a process that never scanned this archive starts its scan for late files.

    Ids up to the recorded mark were scanned by an earlier process, and the late
    files among them were described; the last rescan_ids() below it are read again.
    A mark above the highest id (the table was emptied and refilled) is not trusted.
    """
    value = get_meta(session, SCAN_MARK_PREFIX + archive_name)
    try:
        mark = int(value) if value is not None else 0
    except ValueError:
        mark = 0
    return max(0, mark - rescan_ids(session)) if 0 < mark <= top else 0


def record_scan_mark(session: Session, archive_name: str, mark: int) -> None:
    """Record that the archive's rows up to ``mark`` need no scan for late files again."""
    set_meta(session, SCAN_MARK_PREFIX + archive_name, str(int(mark)))


def dir_bound(session: Session, archive_name: str, timecode: int) -> int | None:
    """The highest file id the finalization files of one dir describe (None: not finalized)."""
    first = session.scalar(select(func.max(TD.finalize_file_id)).where(
        TD.archive_name == archive_name, TD.timecode == timecode, TD.finalized.is_(True)))
    if first is None:
        return None
    more = None
    if has_supplements(session):
        more = session.scalar(select(func.max(S.covers_up_to)).where(
            S.archive_name == archive_name, S.timecode == timecode))
    return max(int(first), int(more or 0))
