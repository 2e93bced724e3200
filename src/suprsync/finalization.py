"""The finalization step: deciding which timecode dirs are done, writing their YAML
finalization files and registering them in the catalog.

The rules that are queries (completion, sync state, what a dir holds) live in
:mod:`suprsync.catalog.timecode`; this module acts on them. Every rule looks only
at one archive. While the clock is in doubt no dir is completed by age and no
finalization file is written: downstream cannot take one back. ``now`` comes from
the clock the caller passes in.
"""

from __future__ import annotations

import fcntl
import glob
import logging
import os
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import yaml
from sqlalchemy import case, func, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from .catalog.anomalies import DirWatch, future_dirs, newest_timestamp, timecode_at
from .catalog.copies import withhold_where_lost
from .catalog.dialects import LOCK_TIMEOUT
from .catalog.idmarks import id_mark, ids_reused
from .catalog.lateness import (
    RESCAN_IDS,
    SUPRSYNC_SUBDIR,
    dir_bound,
    find_late_files,
    keep_late_scan,
    late_in_dirs,
    load_late_scan,
    rescan_ids,
)
from .catalog.schema import NOT_IGNORED, UNSYNCED, Supplement, SupRsyncFile, TimecodeDir
from .catalog.store import SupRsyncFilesManager, finalized_until
from .catalog.timecode import (
    NOT_FINALIZED,
    DirContent,
    dir_content,
    freeze_registrations,
    mark_completed,
    mark_dir_synced,
    max_file_id,
    rows_above,
    settled_top,
    sync_candidates,
    waiting_count,
)
from .events import event
from .fsutil import write_atomic
from .hashing import md5_file

log = logging.getLogger(__name__)

F = SupRsyncFile
TD = TimecodeDir
Clock = Callable[[], float]


def finalization_name(now: float, archive_name: str, timecode: int) -> str:
    """File name of a finalization file written at ``now``."""
    return f"{int(now)}_{archive_name}_{timecode}_finalized.yaml"


def summary_of(content: DirContent, session: Session, archive_name: str, timecode: int,
               now: float, instance_id: str) -> dict[str, Any]:
    """The content of a finalization file."""
    return {
        "timecode": int(timecode),
        "num_files": content.num_files,
        "subdirs": sorted(content.subdirs),
        "finalized_at": now,
        "finalized_until": min(now, finalized_until(session, archive_name, now)),
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
                 file_root: str, instance_id: str, now: float,
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
    if content is None:
        content, summary = manager.read(
            lambda s: _content_and_summary(s, archive_name, timecode, now, instance_id, 0),
            what="finalization summary")
    else:
        known = content
        summary = manager.read(lambda s: summary_of(known, s, archive_name, timecode, now,
                                                    instance_id),
                               what="finalization summary")
    if content.unsynced:
        log.info("timecode dir %s of %s was not finalized: %d of its files are not verified",
                 timecode, archive_name, content.unsynced)
        return None
    this_dir = (TD.archive_name == archive_name) & (TD.timecode == timecode)
    result: list[TimecodeDir] = []
    withheld: list[str] = []

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
        withheld[:] = withhold_where_lost(session, archive_name, timecode, row.id)
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
    _log_withheld(withheld, timecode, archive_name, remote_path)
    return result[0]


def _log_withheld(names: list[str], timecode: int, archive_name: str,
                  remote_path: str) -> None:
    for name in names:
        log.warning("not shipping %s to destination %s: files of timecode dir %s of %s were "
                    "deleted locally before they reached it, so that day is not whole there",
                    remote_path, name, timecode, archive_name)


def _content_and_summary(session: Session, archive_name: str, timecode: int, now: float,
                         instance_id: str, above: int) -> tuple[DirContent, dict[str, Any]]:
    content = dir_content(session, archive_name, timecode, above)
    return content, summary_of(content, session, archive_name, timecode, now, instance_id)


def supplement_dir(manager: SupRsyncFilesManager, archive_name: str, timecode: int,
                   file_root: str, instance_id: str, now: float) -> tuple[str, int] | None:
    """Write a further finalization file for a finalized dir that got late files.

    It describes the whole dir as it is now (so its subdirs include every subdir the
    earlier files reported) and is written only once every non-ignored file of the
    dir is verified. One transaction registers it and records, in the supplements
    table, the highest file id it describes, but only if no one described those rows
    meanwhile and no file was added since the YAML was made: each batch of late files
    gets exactly one further file. Returns (remote path, highest id described) or None.
    """
    def read(session: Session) -> tuple[int, DirContent, dict[str, Any]] | None:
        bound = dir_bound(session, archive_name, timecode)
        if bound is None:
            return None
        content, summary = _content_and_summary(session, archive_name, timecode, now,
                                                instance_id, bound)
        return bound, content, summary

    found = manager.read(read, what="finalization summary")
    if found is None:
        return None
    bound, content, summary = found
    if content.late == 0 or content.unsynced > 0:
        return None
    this_dir = (TD.archive_name == archive_name) & (TD.timecode == timecode)
    withheld: list[str] = []

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
        withheld[:] = withhold_where_lost(session, archive_name, timecode, row.id)
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
    _log_withheld(withheld, timecode, archive_name, remote_path)
    return remote_path, content.max_id


#: How long the timecode step waits for the registrations in flight (a producer's
#: transaction) before it scans without that bound, reading RESCAN_IDS again next time.
SETTLE_WAIT = 2.0


def _settled_top(manager: SupRsyncFilesManager, archive_name: str,
                 watch: DirWatch) -> int | None:
    """settled_top in its own short transaction; None (logged once while it lasts) when
    a transaction writing the files table held it off for SETTLE_WAIT."""
    try:
        top = manager.write(lambda s: settled_top(s, SETTLE_WAIT),
                            what=f"last registered id of {archive_name}")
    except OperationalError as exc:
        if getattr(exc.orig, "sqlstate", None) != LOCK_TIMEOUT:
            raise
        if not watch.unsettled_logged:
            watch.unsettled_logged = True
            log.warning("a transaction writing the catalog's files table has been open "
                        "for more than %.0f s: the look for late files of archive %s reads "
                        "the last %d ids again until it ends", SETTLE_WAIT, archive_name,
                        RESCAN_IDS)
        return None
    if watch.unsettled_logged:
        watch.unsettled_logged = False
        log.info("the look for late files of archive %s again ends where registrations "
                 "have ended", archive_name)
    return top


_watches: weakref.WeakKeyDictionary[SupRsyncFilesManager, dict[str, DirWatch]] = (
    weakref.WeakKeyDictionary())


def watch_of(manager: SupRsyncFilesManager, archive_name: str) -> DirWatch:
    """The DirWatch kept for an archive of this manager."""
    per_archive = _watches.setdefault(manager, {})
    return per_archive.setdefault(archive_name, DirWatch(archive_name))


def update_timecode_dirs(manager: SupRsyncFilesManager, archive_name: str, file_root: str,
                         instance_id: str, clock: Clock,
                         watch: DirWatch | None = None,
                         clock_ok: bool = True) -> list[TimecodeDir]:
    """Complete, sync and finalize this archive's dirs; return the dirs finalized now.

    Also finds dirs dated in the future and late files (recorded in ``watch``), and
    writes further finalization files for late files once they are verified. While
    ``clock_ok`` is False, or rows of the archive lie well after now, no dir is
    completed by age and no finalization file is written.
    """
    now = clock()
    watch = watch if watch is not None else watch_of(manager, archive_name)
    rescan = rescan_ids(manager.dialect)
    # Where rows can commit after rows with higher ids, the scan ends at an id below
    # which every registration has ended, so that the next one can start there.
    settled = _settled_top(manager, archive_name, watch) if rescan else None

    def look(session: Session) -> tuple[list[int], float | None, int, str | None, list,
                                         int | None]:
        top = settled if settled is not None else max_file_id(session)
        reused = None  # the last id read, when ids up to it may have been given again
        if watch.scanned_up_to is not None:
            after = watch.scanned_up_to if watch.settled else max(0, watch.scanned_up_to
                                                                  - rescan)
            if ids_reused(session, watch.scanned_up_to, watch.scanned_mark, top):
                reused, after = watch.scanned_up_to, 0
            late = find_late_files(session, archive_name, after_id=after, up_to=top)
        else:
            # A new watch: scan what the agents of the archive have not scanned yet,
            # and read the dirs they left with late files (the whole history once).
            kept = load_late_scan(session, archive_name)
            start = 0 if kept is None else max(0, kept.scanned_up_to - rescan)
            if kept is not None and ids_reused(session, kept.scanned_up_to, kept.mark, top):
                reused, start = kept.scanned_up_to, 0
            late = find_late_files(session, archive_name, after_id=start, up_to=top)
            if kept is not None:
                late += late_in_dirs(session, archive_name, set(kept.dirs))
                found = {f.timecode for f in late}
                watch.cleared.update(tc for tc in kept.dirs if tc not in found)
        return (future_dirs(session, archive_name, now), newest_timestamp(session, archive_name),
                top, id_mark(session), late, reused)

    future, newest, top, mark, late, reused = manager.read(
        look, what=f"timecode anomalies of {archive_name}")
    if reused is not None:
        log.warning("the newest rows of the catalog were deleted since the look for late "
                    "files of archive %s read up to file id %d (sqlite gives their ids to "
                    "new rows): it read every id again", archive_name, reused)
    watch.saw_future(future, now)
    watch.saw_late(late)
    watch.scanned_up_to, watch.scanned_mark = top, mark
    watch.settled = not rescan or settled is not None
    trusted = not watch.saw_clock(newest, now) and clock_ok

    def advance(session: Session) -> tuple[list[int], list[int]]:
        keep_late_scan(session, archive_name, top, mark,
                       {f.timecode for f in watch.late.values()}, watch.cleared)
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
                             clock(), contents[timecode])
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
        written = supplement_dir(manager, archive_name, timecode, file_root, instance_id,
                                 clock())
        if written is not None:
            watch.supplements_written += 1
            watch.described(timecode, written[1])
    return finalized

