"""Timecode directories: detection, completion and sync state (queries and updates).

Every rule here looks only at one archive: a file or a newer timecode of another
archive never completes, syncs or holds back a dir of this one. A dir dated in
the future completes nothing. Writing finalization files is the finalization
step's (:mod:`suprsync.finalization`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import case, func, or_, select, update
from sqlalchemy.orm import Session

from ..paths import normalize_remote_path, subdir_of, timecode_of
from .anomalies import future_limit, timecode_at
from .dialects import dialect_of, via_unsynced_index
from .dirrows import in_dir
from .lateness import SUPRSYNC_SUBDIR, own_file
from .quarantine import HEALTHY, QUARANTINED, printable
from .schema import (
    NOT_IGNORED,
    PENDING_COPY,
    SYNCED,
    UNSYNCED,
    DestinationCopy,
    SupRsyncFile,
    TimecodeDir,
)
from .unsynced import unsynced_rows

log = logging.getLogger(__name__)

F = SupRsyncFile
TD = TimecodeDir
DC = DestinationCopy

#: A dir with no newer one completes when now's timecode is more than this past it.
DAYS_TO_COMPLETE = 1

NOT_COMPLETED = or_(TD.completed.is_(None), TD.completed.is_(False))
NOT_SYNCED = or_(TD.synced.is_(None), TD.synced.is_(False))
NOT_FINALIZED = or_(TD.finalized.is_(None), TD.finalized.is_(False))


def lock_dir_rows(session: Session, archive_name: str) -> None:
    """Keep other transactions from creating this archive's dir rows now (a lock on
    PostgreSQL; sqlite serializes writers)."""
    dialect_of(session).lock_archive_dirs(session, archive_name)


def ensure_tcdir(session: Session, archive_name: str, timecode: int) -> None:
    """Create the row of a timecode dir unless it exists."""
    query = select(TD.id).where(TD.archive_name == archive_name,
                                TD.timecode == timecode).limit(1)
    if session.scalar(query) is not None:
        return
    lock_dir_rows(session, archive_name)
    if session.scalar(query) is None:
        session.add(TD(timecode=timecode, archive_name=archive_name, completed=False,
                       synced=False, finalized=False))
        session.flush()


def max_file_id(session: Session) -> int:
    """Highest file id of the catalog (a primary-key lookup)."""
    return int(session.scalar(select(func.max(F.id))) or 0)


def scan_timecodes(
    session: Session, archive_name: str, after_id: int = 0, up_to_id: int | None = None,
    min_ctime: float | None = None,
) -> tuple[int, int]:
    """Create missing timecode-dir rows for the files with after_id < id <= up_to_id.

    Returns (rows created, up_to_id). The scan is a primary-key range and reads
    only the distinct 6-character prefixes of the rows' remote paths.
    """
    if up_to_id is None:
        up_to_id = max_file_id(session)
    if up_to_id <= after_id:
        return 0, up_to_id
    # archive_name || '' keeps the planner on the primary-key range (an index on the
    # archive would make it walk every row of the archive).
    query = select(func.substr(F.remote_path, 1, 6)).where(
        F.id > after_id, F.id <= up_to_id, F.archive_name.concat("") == archive_name).distinct()
    if min_ctime is not None:
        query = query.where(F.timestamp > min_ctime)
    # A prefix that is not text (NULL, a BLOB) belongs to a quarantined row: no dir.
    found = {tc for prefix in session.scalars(query)
             if isinstance(prefix, str) and (tc := timecode_of(prefix)) is not None}
    if not found:
        return 0, up_to_id
    lock_dir_rows(session, archive_name)
    known = set(session.scalars(
        select(TD.timecode).where(TD.archive_name == archive_name, TD.timecode.in_(found))))
    for timecode in sorted(found - known):
        session.add(TD(timecode=timecode, archive_name=archive_name, completed=False,
                       synced=False, finalized=False))
    session.flush()
    return len(found - known), up_to_id


def mark_completed(session: Session, archive_name: str, now: float, by_age: bool = True) -> int:
    """Complete the dirs of this archive that have a newer one, or are over a day old.

    A dir dated in the future (see :func:`future_limit`) is not a newer dir, and is
    never completed. ``by_age=False`` (the clock is in doubt) completes only the dirs
    that have a newer one.
    """
    limit = future_limit(now)
    newest = session.scalar(select(func.max(TD.timecode)).where(
        TD.archive_name == archive_name, TD.timecode <= limit))
    if newest is None:
        return 0
    rules = [TD.timecode < newest]
    if by_age:
        rules.append(TD.timecode < timecode_at(now) - DAYS_TO_COMPLETE)
    result = session.execute(
        update(TD)
        .where(TD.archive_name == archive_name, NOT_COMPLETED, TD.timecode <= limit,
               or_(*rules))
        .values(completed=True))
    return int(result.rowcount or 0)


def waiting_count(session: Session, archive_name: str, timecode: int) -> int:
    """Non-ignored files of this archive's dir whose copy is not verified at every
    destination (a search of the archive's few unsynced rows and pending copies)."""
    return int(session.scalar(via_unsynced_index(
        select(func.count()).select_from(F)
        .where(in_dir(session, archive_name, timecode), UNSYNCED, NOT_IGNORED), F)) or 0) \
        or pending_in_dir(session, archive_name, timecode)


def pending_copies(archive_name: str, *columns: Any):  # type: ignore[no-untyped-def]
    """SELECT of columns of the archive's non-ignored files still to be copied to a
    destination other than the primary (through the index of pending copies)."""
    # The files come from the (few) pending copies by id, never from an index of the
    # archive: the archive is compared as an expression, which no index serves.
    pending = select(DC.file_id).where(PENDING_COPY)
    return select(*columns).where(F.id.in_(pending), F.archive_name.concat("") == archive_name,
                                  NOT_IGNORED)


def pending_in_dir(session: Session, archive_name: str, timecode: int) -> int:
    """Non-ignored files of the dir not yet verified at some further destination."""
    return int(session.scalar(pending_copies(archive_name, func.count())
                              .where(in_dir(session, archive_name, timecode))) or 0)


def unsynced_count(session: Session, archive_name: str, timecode: int) -> int:
    """Non-ignored files of this archive's dir that are not verified on the remote.

    A quarantined row is never counted as verified: it holds its dir back. It is
    looked for only once no other row is missing (the check reads the whole dir).
    """
    return waiting_count(session, archive_name, timecode) or int(session.scalar(
        select(func.count()).select_from(F)
        .where(in_dir(session, archive_name, timecode), SYNCED, QUARANTINED,
               NOT_IGNORED)) or 0)


def sync_candidates(session: Session, archive_name: str) -> list[int]:
    """Completed dirs not yet synced nor finalized with no unsynced file (quarantined
    rows aside: see :func:`dir_content`)."""
    candidates = list(session.scalars(
        select(TD.timecode).where(TD.archive_name == archive_name, TD.completed.is_(True),
                                  NOT_SYNCED, NOT_FINALIZED).distinct()))
    if not candidates:
        return []
    # Dirs held back by an unsynced file (one at the attempt limit stays so forever)
    # are found by one query, not by reading each of them on every call.
    blocked = blocked_dirs(session, archive_name)
    return [tc for tc in candidates
            if tc not in blocked and waiting_count(session, archive_name, tc) == 0]


def _dir_of_prefix(prefix: object) -> int | None:
    """The timecode of a 6-character remote path prefix ``NNNNN/`` (what in_dir matches;
    the bytes of a remote path stored as a BLOB too)."""
    if isinstance(prefix, bytes):
        prefix = prefix.decode("ascii", "replace")
    if (isinstance(prefix, str) and len(prefix) == 6 and prefix[5] == "/"
            and prefix[:5].isascii() and prefix[:5].isdigit()):
        return int(prefix[:5])
    return None


def blocked_dirs(session: Session, archive_name: str) -> set[int]:
    """Timecode dirs of the archive that hold a non-ignored file not verified.

    One read of the archive's unsynced rows (a partial index: as many entries as
    files waiting or given up on, however long the history).
    """
    dirs: set[int] = set()
    for rows in (unsynced_rows(archive_name, F.remote_path.label("path")),
                 pending_copies(archive_name, F.remote_path.label("path"))):
        sub = rows.subquery()
        for prefix in session.scalars(select(func.substr(sub.c.path, 1, 6)).distinct()):
            tc = _dir_of_prefix(prefix)
            if tc is not None:
                dirs.add(tc)
            elif prefix is not None:
                # Spelled otherwise (``./NNNNN/x``, ``NNNNN//x``): the dir of the
                # normalized path, read for these few rows alone.
                paths = session.scalars(select(sub.c.path)
                                        .where(func.substr(sub.c.path, 1, 6) == prefix))
                dirs.update(tc for p in paths if (tc := _dir_of_path(p)) is not None)
    return dirs


def _dir_of_path(remote_path: object) -> int | None:
    """The timecode dir a remote path lies in once normalized; None for one that is
    not a path suprsync sends."""
    try:
        return timecode_of(normalize_remote_path(remote_path))  # type: ignore[arg-type]
    except (ValueError, TypeError):
        return None


def mark_synced(session: Session, archive_name: str) -> list[int]:
    """Mark completed dirs whose non-ignored files are all verified; return their timecodes."""
    done = [tc for tc in sync_candidates(session, archive_name)
            if unsynced_count(session, archive_name, tc) == 0]
    if done:
        session.execute(update(TD).where(TD.archive_name == archive_name,
                                         TD.timecode.in_(done)).values(synced=True))
    return done


def mark_dir_synced(session: Session, archive_name: str, timecode: int) -> bool:
    """Mark a completed dir synced if it still has no unsynced file; True when marked."""
    if waiting_count(session, archive_name, timecode):
        return False
    return bool(session.execute(
        update(TD).where(TD.archive_name == archive_name, TD.timecode == timecode,
                         TD.completed.is_(True), NOT_FINALIZED)
        .values(synced=True)).rowcount)


@dataclass
class DirContent:
    """What a finalization file of a dir says, and the rows it was made from."""

    #: Files of the dir verified on the destination.
    num_files: int = 0
    #: Second path elements of those files.
    subdirs: set[str] = field(default_factory=set)
    #: Non-ignored files of the dir that are not verified.
    unsynced: int = 0
    #: Rows outside ``<tc>/suprsync/`` with an id above the bound asked for, and the
    #: highest of their ids.
    rows: int = 0
    max_id: int = 0
    #: Non-ignored ones among those rows.
    late: int = 0


def dir_content(session: Session, archive_name: str, timecode: int,
                above: int = 0) -> DirContent:
    """Read every row of this archive's dir; count the rows with an id above ``above``."""
    content = DirContent()
    # Verified and ignored are decided in SQL, as everywhere else: rows written by
    # other programs may hold NULLs or text in these columns. A quarantined row is
    # never verified.
    rows = session.execute(
        select(F.id, F.remote_path, case((SYNCED & HEALTHY, 1), else_=0),
               case((NOT_IGNORED, 0), else_=1))
        .where(in_dir(session, archive_name, timecode)))
    for file_id, raw_path, synced, ignored in rows:
        path = printable(raw_path) if isinstance(raw_path, str | bytes) else ""
        if synced:
            content.num_files += 1
            if (sub := subdir_of(path)) is not None:
                content.subdirs.add(sub)
        elif not ignored:
            content.unsynced += 1
        if own_file(path, timecode) or int(file_id) <= above:
            continue
        content.rows += 1
        content.max_id = max(content.max_id, int(file_id))
        if not ignored:
            content.late += 1
    return content


def rows_above(session: Session, archive_name: str, timecode: int,
               above: int) -> tuple[int, int]:
    """(count, highest id) of the dir's rows outside ``<tc>/suprsync/`` above an id."""
    count, top = session.execute(
        select(func.count(), func.max(F.id)).where(
            in_dir(session, archive_name, timecode), F.id > above,
            ~F.remote_path.like(f"{int(timecode)}/{SUPRSYNC_SUBDIR}/%"))).one()
    return int(count or 0), int(top or 0)


def freeze_registrations(session: Session, wait: float | None = None) -> None:
    """Wait for registrations in flight and hold new ones until commit (a table lock
    on PostgreSQL, which hands out ids before rows commit; sqlite hands them out
    under its write lock). With ``wait``, an error after that many seconds."""
    dialect_of(session).freeze_registrations(session, F.__table__, wait)


def settled_top(session: Session, wait: float | None = None) -> int:
    """The highest file id once the registrations in flight have ended: no row with a
    lower id can commit later (a write transaction; see freeze_registrations)."""
    freeze_registrations(session, wait)
    return max_file_id(session)


def dir_states(session: Session, archive_name: str) -> dict[str, list[int]]:
    """Timecodes of this archive that are open, completed but unsynced, and finalized."""
    rows = session.execute(
        select(TD.timecode, TD.completed, TD.synced, TD.finalized)
        .where(TD.archive_name == archive_name).order_by(TD.timecode)).all()
    states: dict[str, list[int]] = {"open": [], "completed_unsynced": [], "synced": [],
                                    "finalized": []}
    for timecode, completed, synced, finalized in rows:
        if finalized:
            states["finalized"].append(timecode)
        elif not completed:
            states["open"].append(timecode)
        elif not synced:
            states["completed_unsynced"].append(timecode)
        else:
            states["synced"].append(timecode)
    return states
