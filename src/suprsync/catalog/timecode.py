"""Timecode directories: detection, completion, sync state and finalization files.

Every rule here looks only at one archive: a file or a newer timecode of another
archive never completes, syncs or holds back a dir of this one. A dir dated in
the future completes nothing, and while the clock is in doubt no dir is completed
by age and no finalization file is written: downstream cannot take one back.
"""

from __future__ import annotations

import fcntl
import glob
import logging
import os
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import yaml
from sqlalchemy import case, func, or_, select, text, update
from sqlalchemy.orm import Session

from ..events import event
from ..fsutil import write_atomic
from ..hashing import md5_file
from ..paths import subdir_of, timecode_of
from .anomalies import DirWatch, future_dirs, future_limit, newest_timestamp, timecode_at
from .dirrows import in_dir
from .hints import UNSYNCED_ROWS
from .lateness import (
    RESCAN_IDS,
    SUPRSYNC_SUBDIR,
    dir_bound,
    find_late_files,
    keep_late_scan,
    late_in_dirs,
    load_late_scan,
    own_file,
)
from .quarantine import HEALTHY, QUARANTINED, printable
from .schema import NOT_IGNORED, SYNCED, UNSYNCED, Supplement, SupRsyncFile, TimecodeDir

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


def finalization_name(now: float, archive_name: str, timecode: int) -> str:
    """File name of a finalization file written at ``now``."""
    return f"{int(now)}_{archive_name}_{timecode}_finalized.yaml"


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
    """Non-ignored files of this archive's dir whose copy is not verified (a search of
    the archive's few unsynced rows)."""
    return int(session.scalar(
        select(func.count()).select_from(F)
        .where(in_dir(session, archive_name, timecode), UNSYNCED, NOT_IGNORED)
        .with_hint(F, UNSYNCED_ROWS, "sqlite")) or 0)


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
    """The timecode of a 6-character remote path prefix ``NNNNN/`` (what in_dir matches)."""
    if (isinstance(prefix, str) and len(prefix) == 6 and prefix[5] == "/"
            and prefix[:5].isascii() and prefix[:5].isdigit()):
        return int(prefix[:5])
    return None


def blocked_dirs(session: Session, archive_name: str) -> set[int]:
    """Timecode dirs of the archive that hold a non-ignored file not verified.

    One read of the archive's unsynced rows (a partial index: as many entries as
    files waiting or given up on, however long the history).
    """
    from .store import unsynced_rows

    rows = unsynced_rows(archive_name, F.remote_path.label("path")).subquery()
    prefixes = session.scalars(select(func.substr(rows.c.path, 1, 6)).distinct())
    return {tc for prefix in prefixes if (tc := _dir_of_prefix(prefix)) is not None}


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


def summary_of(content: DirContent, manager: SupRsyncFilesManager, session: Session,
               archive_name: str, timecode: int, now: float,
               instance_id: str) -> dict[str, Any]:
    """The content of a finalization file."""
    return {
        "timecode": int(timecode),
        "num_files": content.num_files,
        "subdirs": sorted(content.subdirs),
        "finalized_at": now,
        "finalized_until": min(now, manager.get_finalized_until(archive_name,
                                                                session=session)),
        "archive_name": archive_name,
        "instance_id": instance_id,
    }


def dir_summary(session: Session, manager: SupRsyncFilesManager, archive_name: str,
                timecode: int, now: float, instance_id: str) -> dict[str, Any]:
    """The content of the finalization file of a dir written now."""
    content = dir_content(session, archive_name, timecode)
    return summary_of(content, manager, session, archive_name, timecode, now, instance_id)


def freeze_registrations(session: Session) -> None:
    """On PostgreSQL, wait for registrations in flight and hold new ones until commit.

    Ids are handed out before a row commits, so a row can commit after rows with
    higher ids; under this lock the rows a finalization file describes are exactly
    those below its bound. sqlite hands out ids under its write lock.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(
            f"LOCK TABLE {F.__tablename__} IN SHARE ROW EXCLUSIVE MODE"))


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


@contextmanager
def _instance_lock(file_root: str, instance_id: str) -> Iterator[None]:
    """Hold an exclusive lock of this instance's finalization files (released on exit,
    also when the process dies)."""
    root = os.path.abspath(file_root)
    os.makedirs(root, exist_ok=True)
    fd = os.open(os.path.join(root, f".{instance_id}.finalize.lock"),
                 os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class _NotFinalized(Exception):
    """Raised inside the finalization transaction to roll it back."""


Claim = Callable[[Session, str, str, str], object]


def _write_and_claim(manager: SupRsyncFilesManager, archive_name: str, timecode: int,
                     file_root: str, instance_id: str, now: float,
                     summary: dict[str, Any], claim: Claim) -> str | None:
    """Write a finalization file, then let ``claim`` register it in one transaction.

    claim(session, local_path, remote_path, md5) registers the file or raises
    _NotFinalized. Returns the remote path of the registered file, or None (and no
    file is left) when the claim failed or the file name is taken.
    """
    name = finalization_name(now, archive_name, timecode)
    now_tc = timecode_at(now)
    local_path = os.path.join(os.path.abspath(file_root), str(now_tc), instance_id, name)
    remote_path = f"{now_tc}/{SUPRSYNC_SUBDIR}/{instance_id}/{name}"

    def registered() -> int:
        return int(manager.read(lambda s: s.scalar(
            select(func.count()).select_from(F).where(F.local_path == local_path)),
            what="look up finalization file") or 0)

    # Two processes with one instance id and file root would take each other's
    # unregistered YAML for an orphan: one finalization at a time per instance.
    with _instance_lock(file_root, instance_id):
        _remove_orphans(manager, file_root, now, instance_id, archive_name, timecode)
        if registered():
            # Another finalization file of this dir was written in the same second.
            log.info("finalization file %s exists already; timecode dir %s of %s waits "
                     "for the next second", local_path, timecode, archive_name)
            return None
        write_atomic(local_path, yaml.safe_dump(summary, default_flow_style=False).encode())
        md5 = md5_file(local_path)
        try:
            done = manager.write(lambda s: claim(s, local_path, remote_path, md5),
                                 what=f"finalize {archive_name} {timecode}")
        except _NotFinalized:
            done = None
        if not done and not registered():
            os.remove(local_path)
    if not done:
        return None
    return remote_path


def finalize_dir(manager: SupRsyncFilesManager, archive_name: str, timecode: int,
                 file_root: str, instance_id: str,
                 content: DirContent | None = None) -> TimecodeDir | None:
    """Write, register and record the finalization file of one synced dir.

    The YAML is written atomically before the catalog is touched; the row of the
    file and the finalized flag are committed in one transaction, which claims the
    dir only if no one finalized it meanwhile and no file was added to it since the
    YAML was made. A YAML left by a run killed before that commit is removed on the
    next attempt, so exactly one is ever registered.

    ``content``: the dir as read just before (so it is not read twice). The dir's rows
    are read once per finalization: the claim checks the unsynced rows and the ids,
    not each row again.
    """
    now = manager.clock()
    if content is None:
        content, summary = manager.read(
            lambda s: _content_and_summary(s, manager, archive_name, timecode, now,
                                           instance_id, 0),
            what="finalization summary")
    else:
        known = content
        summary = manager.read(lambda s: summary_of(known, manager, s, archive_name,
                                                    timecode, now, instance_id),
                               what="finalization summary")
    if content.unsynced:
        log.info("timecode dir %s of %s was not finalized: %d of its files are not verified",
                 timecode, archive_name, content.unsynced)
        return None
    this_dir = (TD.archive_name == archive_name) & (TD.timecode == timecode)
    result: list[TimecodeDir] = []

    def claim(session: Session, local_path: str, remote_path: str,
              md5: str) -> TimecodeDir | None:
        # The claiming UPDATE comes first: on sqlite it takes the write lock, so the
        # checks below cannot be overtaken by another writer. Every row of the dir is
        # claimed at once (catalogs written by other programs may hold duplicates).
        claimed = session.execute(
            update(TD).where(this_dir, TD.completed.is_(True), NOT_FINALIZED)
            .values(finalized=True, synced=True))
        if not claimed.rowcount:
            return None
        freeze_registrations(session)
        earlier = session.scalar(select(func.count()).select_from(TD).where(
            this_dir, TD.finalize_file_id.is_not(None)))
        if (earlier or waiting_count(session, archive_name, timecode) > 0
                or rows_above(session, archive_name, timecode, 0)
                != (content.rows, content.max_id)):
            raise _NotFinalized
        row = manager.add_file(local_path, remote_path, archive_name, local_md5sum=md5,
                               timestamp=now, session=session)
        session.execute(update(TD).where(this_dir).values(finalize_file_id=row.id))
        tcdir = session.scalars(select(TD).where(this_dir).order_by(TD.id).limit(1)).first()
        if tcdir is not None:
            result.append(tcdir)
        return tcdir

    remote_path = _write_and_claim(manager, archive_name, timecode, file_root, instance_id,
                                   now, summary, claim)
    if remote_path is None or not result:
        log.info("timecode dir %s of %s was not finalized: it changed or another agent did it",
                 timecode, archive_name)
        return None
    log.info("finalized timecode dir %s of archive %s: %s (%d files, subdirs %s)",
             timecode, archive_name, remote_path, summary["num_files"], summary["subdirs"],
             extra=event("finalized"))
    return result[0]


def _content_and_summary(session: Session, manager: SupRsyncFilesManager,
                         archive_name: str, timecode: int, now: float, instance_id: str,
                         above: int) -> tuple[DirContent, dict[str, Any]]:
    content = dir_content(session, archive_name, timecode, above)
    return content, summary_of(content, manager, session, archive_name, timecode, now,
                               instance_id)


def supplement_dir(manager: SupRsyncFilesManager, archive_name: str, timecode: int,
                   file_root: str, instance_id: str) -> tuple[str, int] | None:
    """Write a further finalization file for a finalized dir that got late files.

    It describes the whole dir as it is now (so its subdirs include every subdir the
    earlier files reported) and is written only once every non-ignored file of the
    dir is verified. One transaction registers it and records, in the supplements
    table, the highest file id it describes, but only if no one described those rows
    meanwhile and no file was added since the YAML was made: each batch of late files
    gets exactly one further file. Returns (remote path, highest id described) or None.
    """
    now = manager.clock()

    def read(session: Session) -> tuple[int, DirContent, dict[str, Any]] | None:
        bound = dir_bound(session, archive_name, timecode)
        if bound is None:
            return None
        content, summary = _content_and_summary(session, manager, archive_name, timecode,
                                                now, instance_id, bound)
        return bound, content, summary

    found = manager.read(read, what="finalization summary")
    if found is None:
        return None
    bound, content, summary = found
    if content.late == 0 or content.unsynced > 0:
        return None
    this_dir = (TD.archive_name == archive_name) & (TD.timecode == timecode)

    def claim(session: Session, local_path: str, remote_path: str, md5: str) -> bool:
        # A write first, so that sqlite takes its write lock before the checks.
        touched = session.execute(update(TD).where(this_dir, TD.finalized.is_(True))
                                  .values(finalized=True))
        if not touched.rowcount:
            raise _NotFinalized
        freeze_registrations(session)
        if (dir_bound(session, archive_name, timecode) != bound
                or waiting_count(session, archive_name, timecode) > 0
                or rows_above(session, archive_name, timecode, bound)
                != (content.rows, content.max_id)):
            raise _NotFinalized
        row = manager.add_file(local_path, remote_path, archive_name, local_md5sum=md5,
                               timestamp=now, session=session)
        session.add(Supplement(archive_name=archive_name, timecode=timecode,
                               instance_id=instance_id, file_id=row.id,
                               covers_up_to=content.max_id, late_files=content.late,
                               written_at=now))
        return True

    remote_path = _write_and_claim(manager, archive_name, timecode, file_root, instance_id,
                                   now, summary, claim)
    if remote_path is None:
        log.info("no further finalization file for timecode dir %s of %s now: it changed "
                 "or another agent wrote one", timecode, archive_name)
        return None
    log.warning("wrote a further finalization file for timecode dir %s of archive %s: %s "
                "(%d late files; %d files, subdirs %s)", timecode, archive_name, remote_path,
                content.late, summary["num_files"], summary["subdirs"],
                extra=event("finalized"))
    return remote_path, content.max_id


_watches: weakref.WeakKeyDictionary[SupRsyncFilesManager, dict[str, DirWatch]] = (
    weakref.WeakKeyDictionary())


def watch_of(manager: SupRsyncFilesManager, archive_name: str) -> DirWatch:
    """The DirWatch kept for an archive of this manager."""
    per_archive = _watches.setdefault(manager, {})
    return per_archive.setdefault(archive_name, DirWatch(archive_name))


def update_timecode_dirs(manager: SupRsyncFilesManager, archive_name: str, file_root: str,
                         instance_id: str, watch: DirWatch | None = None,
                         clock_ok: bool = True) -> list[TimecodeDir]:
    """Complete, sync and finalize this archive's dirs; return the dirs finalized now.

    Also finds dirs dated in the future and late files (recorded in ``watch``), and
    writes further finalization files for late files once they are verified. While
    ``clock_ok`` is False, or rows of the archive lie well after now, no dir is
    completed by age and no finalization file is written.
    """
    now = manager.clock()
    watch = watch if watch is not None else watch_of(manager, archive_name)
    after = None if watch.scanned_up_to is None else max(0, watch.scanned_up_to - RESCAN_IDS)

    def look(session: Session) -> tuple[list[int], float | None, int, list]:
        top = max_file_id(session)
        if after is not None:
            late = find_late_files(session, archive_name, after_id=after)
        else:
            # A new watch: scan what the agents of the archive have not scanned yet,
            # and read the dirs they left with late files (the whole history once).
            kept = load_late_scan(session, archive_name)
            start = 0 if kept is None else max(0, kept.scanned_up_to - RESCAN_IDS)
            late = find_late_files(session, archive_name, after_id=start)
            if kept is not None:
                late += late_in_dirs(session, archive_name, set(kept.dirs))
                found = {f.timecode for f in late}
                watch.cleared.update(tc for tc in kept.dirs if tc not in found)
        return (future_dirs(session, archive_name, now), newest_timestamp(session, archive_name),
                top, late)

    future, newest, top, late = manager.read(look, what=f"timecode anomalies of {archive_name}")
    watch.saw_future(future, now)
    watch.saw_late(late)
    watch.scanned_up_to = top
    trusted = not watch.saw_clock(newest, now) and clock_ok

    def advance(session: Session) -> tuple[list[int], list[int]]:
        keep_late_scan(session, archive_name, top, {f.timecode for f in watch.late.values()},
                       watch.cleared)
        mark_completed(session, archive_name, now, by_age=trusted)
        synced = list(session.scalars(
            select(TD.timecode).where(TD.archive_name == archive_name, TD.synced.is_(True),
                                      TD.completed.is_(True), NOT_FINALIZED)
            .distinct()))
        return synced, sync_candidates(session, archive_name)

    synced, candidates = manager.write(advance, what=f"update timecode dirs of {archive_name}")
    watch.cleared.clear()
    # A candidate's rows are read once, outside any write: the read decides whether it
    # is synced (a quarantined row holds it back) and is what its finalization describes.
    contents: dict[int, DirContent | None] = dict.fromkeys(synced)
    for timecode in candidates:
        content = manager.read(lambda s, tc=timecode: dir_content(s, archive_name, tc),
                               what="finalization summary")
        if content.unsynced == 0 and manager.write(
                lambda s, tc=timecode: mark_dir_synced(s, archive_name, tc),
                what=f"update timecode dirs of {archive_name}"):
            contents[timecode] = content
    finalized: list[TimecodeDir] = []
    if not trusted:
        return finalized
    for timecode in sorted(contents):
        tcdir = finalize_dir(manager, archive_name, timecode, file_root, instance_id,
                             contents[timecode])
        if tcdir is not None:
            finalized.append(tcdir)
    for timecode in sorted({f.timecode for f in watch.late.values()}):
        ids = [i for i, f in watch.late.items() if f.timecode == timecode]

        def probe(session: Session, tc: int = timecode,
                  ids: list[int] = ids) -> tuple[int | None, int, int]:
            waiting, kept = session.execute(select(
                func.coalesce(func.sum(case((UNSYNCED, 1), else_=0)), 0), func.count())
                .where(F.id.in_(ids), NOT_IGNORED)).one()
            return dir_bound(session, archive_name, tc), int(waiting), int(kept)

        bound, waiting, kept = manager.read(probe, what="late files")
        if bound is not None and bound >= max(ids) or not kept:
            watch.described(timecode, max(ids))  # described meanwhile, or ignored now
            continue
        if waiting:
            continue
        written = supplement_dir(manager, archive_name, timecode, file_root, instance_id)
        if written is not None:
            watch.supplements_written += 1
            watch.described(timecode, written[1])
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
