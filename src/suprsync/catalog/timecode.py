"""Timecode directories: detection, completion, sync state and finalization files.

Every rule here looks only at one archive: a file or a newer timecode of another
archive never completes, syncs or holds back a dir of this one.
"""

from __future__ import annotations

import glob
import logging
import os
from typing import TYPE_CHECKING, Any

import yaml
from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from ..fsutil import write_atomic
from ..hashing import md5_file
from ..paths import subdir_of, timecode_of
from .quarantine import QUARANTINED, printable
from .schema import NOT_IGNORED, SYNCED, UNSYNCED, SupRsyncFile, TimecodeDir

if TYPE_CHECKING:
    from .store import SupRsyncFilesManager

log = logging.getLogger(__name__)

F = SupRsyncFile
TD = TimecodeDir

#: A dir with no newer one completes when now's timecode is more than this past it.
DAYS_TO_COMPLETE = 1

NOT_COMPLETED = or_(TD.completed.is_(None), TD.completed.is_(False))
NOT_SYNCED = or_(TD.synced.is_(None), TD.synced.is_(False))
NOT_FINALIZED = or_(TD.finalized.is_(None), TD.finalized.is_(False))


def timecode_at(unix_time: float) -> int:
    """The timecode of a unix time (its first five digits)."""
    return int(unix_time // 1e5)


def finalization_name(now: float, archive_name: str, timecode: int) -> str:
    """File name of a finalization file written at ``now``."""
    return f"{int(now)}_{archive_name}_{timecode}_finalized.yaml"


def in_dir(timecode: int):  # type: ignore[no-untyped-def]
    """SQL condition: the file's remote path lies under this timecode dir."""
    return F.remote_path.like(f"{int(timecode)}/%")


def lock_dir_rows(session: Session, archive_name: str) -> None:
    """On PostgreSQL, keep other transactions from creating this archive's dir rows now.

    The table has no unique key on (archive, timecode); without this lock, two agents
    detecting the same new dir at once would both insert it. sqlite serializes writers.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(
            func.hashtext(f"suprsync timecode dirs {archive_name}"))))


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


def mark_completed(session: Session, archive_name: str, now: float) -> int:
    """Complete the dirs of this archive that have a newer one, or are over a day old."""
    newest = session.scalar(select(func.max(TD.timecode)).where(TD.archive_name == archive_name))
    if newest is None:
        return 0
    cutoff = timecode_at(now) - DAYS_TO_COMPLETE
    result = session.execute(
        update(TD)
        .where(TD.archive_name == archive_name, NOT_COMPLETED,
               or_(TD.timecode < newest, TD.timecode < cutoff))
        .values(completed=True))
    return int(result.rowcount or 0)


def unsynced_count(session: Session, archive_name: str, timecode: int) -> int:
    """Non-ignored files of this archive's dir that are not verified on the remote.

    A quarantined row is never counted as verified: it holds its dir back. It is
    looked for only once no other row is missing (the check reads the whole dir).
    """
    def count(*conditions: Any) -> int:
        return int(session.scalar(
            select(func.count()).select_from(F)
            .where(F.archive_name == archive_name, in_dir(timecode), *conditions,
                   NOT_IGNORED)) or 0)

    return count(UNSYNCED) or count(SYNCED, QUARANTINED)


def mark_synced(session: Session, archive_name: str) -> list[int]:
    """Mark completed dirs whose non-ignored files are all verified; return their timecodes."""
    candidates = list(session.scalars(
        select(TD.timecode).where(TD.archive_name == archive_name, TD.completed.is_(True),
                                  NOT_SYNCED, NOT_FINALIZED)))
    done = [tc for tc in candidates if unsynced_count(session, archive_name, tc) == 0]
    if done:
        session.execute(update(TD).where(TD.archive_name == archive_name,
                                         TD.timecode.in_(done)).values(synced=True))
    return done


def dir_summary(session: Session, manager: SupRsyncFilesManager, archive_name: str,
                timecode: int, now: float, instance_id: str) -> dict[str, Any]:
    """The content of a finalization file."""
    paths = session.scalars(
        select(F.remote_path).where(F.archive_name == archive_name, in_dir(timecode)))
    num_files = 0
    subdirs: set[str] = set()
    for path in paths:
        num_files += 1
        if isinstance(path, str) and (sub := subdir_of(printable(path))) is not None:
            subdirs.add(sub)
    return {
        "timecode": int(timecode),
        "num_files": num_files,
        "subdirs": sorted(subdirs),
        "finalized_at": now,
        "finalized_until": min(now, manager.get_finalized_until(archive_name,
                                                                session=session)),
        "archive_name": archive_name,
        "instance_id": instance_id,
    }


def _remove_orphans(manager: SupRsyncFilesManager, file_root: str, now: float,
                    instance_id: str, archive_name: str, timecode: int) -> None:
    """Delete finalization files of this dir left unregistered by an interrupted run."""
    pattern = f"*_{glob.escape(archive_name)}_{timecode}_finalized.yaml"
    found = []
    for tc in (timecode_at(now), timecode_at(now) - 1):
        folder = os.path.join(os.path.abspath(file_root), str(tc), instance_id)
        found += glob.glob(os.path.join(glob.escape(folder), pattern))
    if not found:
        return
    registered = set(manager.read(
        lambda s: s.scalars(select(F.local_path).where(F.local_path.in_(found))).all(),
        what="registered finalization files"))
    for path in found:
        if path not in registered:
            log.info("removing unregistered finalization file %s left by an interrupted run", path)
            try:
                os.remove(path)
            except FileNotFoundError:
                pass


class _NotFinalized(Exception):
    """Raised inside the finalization transaction to roll it back."""


def finalize_dir(manager: SupRsyncFilesManager, archive_name: str, timecode: int,
                 file_root: str, instance_id: str) -> TimecodeDir | None:
    """Write, register and record the finalization file of one synced dir.

    The YAML is written atomically before the catalog is touched; the row of the
    file and the finalized flag are committed in one transaction, which claims the
    dir only if no one finalized it meanwhile. A YAML left by a run killed before
    that commit is removed on the next attempt, so exactly one is ever registered.
    """
    now = manager.clock()
    summary = manager.read(
        lambda s: dir_summary(s, manager, archive_name, timecode, now, instance_id),
        what="finalization summary")
    name = finalization_name(now, archive_name, timecode)
    now_tc = timecode_at(now)
    local_path = os.path.join(os.path.abspath(file_root), str(now_tc), instance_id, name)
    remote_path = f"{now_tc}/suprsync/{instance_id}/{name}"
    _remove_orphans(manager, file_root, now, instance_id, archive_name, timecode)
    write_atomic(local_path, yaml.safe_dump(summary, default_flow_style=False).encode())
    md5 = md5_file(local_path)

    this_dir = (TD.archive_name == archive_name) & (TD.timecode == timecode)

    def claim(session: Session) -> TimecodeDir | None:
        # The claiming UPDATE comes first: on sqlite it takes the write lock, so the
        # checks below cannot be overtaken by another writer. Every row of the dir is
        # claimed at once (catalogs written by other programs may hold duplicates).
        claimed = session.execute(
            update(TD).where(this_dir, TD.completed.is_(True), NOT_FINALIZED)
            .values(finalized=True, synced=True))
        if not claimed.rowcount:
            return None
        earlier = session.scalar(select(func.count()).select_from(TD).where(
            this_dir, TD.finalize_file_id.is_not(None)))
        if earlier or unsynced_count(session, archive_name, timecode) > 0:
            raise _NotFinalized
        row = manager.add_file(local_path, remote_path, archive_name, local_md5sum=md5,
                               timestamp=now, session=session)
        session.execute(update(TD).where(this_dir).values(finalize_file_id=row.id))
        return session.scalars(select(TD).where(this_dir).order_by(TD.id).limit(1)).first()

    try:
        tcdir = manager.write(claim, what=f"finalize {archive_name} {timecode}")
    except _NotFinalized:
        tcdir = None
    if tcdir is None:
        registered = manager.read(lambda s: s.scalar(
            select(func.count()).select_from(F).where(F.local_path == local_path)))
        if not registered:
            os.remove(local_path)
        log.info("timecode dir %s of %s was not finalized: it changed or another agent did it",
                 timecode, archive_name)
        return None
    log.info("finalized timecode dir %s of archive %s: %s (%d files, subdirs %s)",
             timecode, archive_name, remote_path, summary["num_files"], summary["subdirs"])
    return tcdir


def update_timecode_dirs(manager: SupRsyncFilesManager, archive_name: str, file_root: str,
                         instance_id: str) -> list[TimecodeDir]:
    """Complete, sync and finalize this archive's dirs; return the dirs finalized now."""
    now = manager.clock()

    def advance(session: Session) -> list[int]:
        mark_completed(session, archive_name, now)
        mark_synced(session, archive_name)
        return list(session.scalars(
            select(TD.timecode).where(TD.archive_name == archive_name, TD.synced.is_(True),
                                      TD.completed.is_(True), NOT_FINALIZED)
            .distinct().order_by(TD.timecode)))

    ready = manager.write(advance, what=f"update timecode dirs of {archive_name}")
    finalized = []
    for timecode in ready:
        tcdir = finalize_dir(manager, archive_name, timecode, file_root, instance_id)
        if tcdir is not None:
            finalized.append(tcdir)
    return finalized


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
