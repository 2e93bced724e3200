"""Operator actions on the catalog: retry failed files, ignore files, re-check files."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import func, select, update

from ..hashing import md5_file
from .conflicts import CHANGED, NewConflict, record_conflicts
from .quarantine import HEALTHY
from .schema import UNSYNCED, SupRsyncFile
from .store import SupRsyncFilesManager

log = logging.getLogger(__name__)

F = SupRsyncFile


def _abs(paths: Sequence[str] | None) -> list[str] | None:
    return None if paths is None else [os.path.abspath(p) for p in paths]


#: Local paths looked up per statement by retry-failed.
PATHS_PER_TRANSACTION = 500


def retry_failed(manager: SupRsyncFilesManager, archive_name: str, max_copy_attempts: int,
                 paths: Sequence[str] | None = None,
                 progress: Callable[[int], None] | None = None) -> int:
    """Reset the attempt counter of unsynced files at the limit; return how many.

    Given paths are done PATHS_PER_TRANSACTION at a time; ``progress`` gets the
    number of paths done.
    """
    wanted = _abs(paths)

    def apply(session, chunk: list[str] | None) -> int:  # type: ignore[no-untyped-def]
        stmt = update(F).where(
            F.archive_name == archive_name, UNSYNCED, F.removed.is_(None),
            func.coalesce(F.failed_copy_attempts, 0) >= max_copy_attempts, HEALTHY,
        )
        if chunk is not None:
            stmt = stmt.where(F.local_path.in_(chunk))
        return int(session.execute(stmt.values(failed_copy_attempts=0)).rowcount or 0)

    if wanted is None:
        count = manager.write(lambda s: apply(s, None), what="retry failed files")
    else:
        count = 0
        for start in range(0, len(wanted), PATHS_PER_TRANSACTION):
            chunk = wanted[start:start + PATHS_PER_TRANSACTION]
            count += manager.write(lambda s, c=chunk: apply(s, c), what="retry failed files")
            if progress is not None:
                progress(start + len(chunk))
    log.info("reset the failed attempts of %d file(s) of archive %s", count, archive_name)
    return count


def set_ignore(manager: SupRsyncFilesManager, paths: Sequence[str], ignore: bool = True,
               archive_name: str | None = None) -> int:
    """Mark the rows of these local paths ignored (or not); return how many rows changed."""
    wanted = _abs(paths) or []

    def apply(session) -> int:  # type: ignore[no-untyped-def]
        stmt = update(F).where(F.local_path.in_(wanted))
        if archive_name is not None:
            stmt = stmt.where(F.archive_name == archive_name)
        return int(session.execute(stmt.values(ignore=ignore)).rowcount or 0)

    count = manager.write(apply, what="set ignore")
    log.info("marked %d file(s) %s", count, "ignored" if ignore else "not ignored")
    return count


@dataclass
class RecheckReport:
    """What a re-check queued."""

    queued: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)


def recheck(manager: SupRsyncFilesManager, paths: Sequence[str],
            archive_name: str | None = None,
            progress: Callable[[int], None] | None = None) -> RecheckReport:
    """Re-hash these local files and queue them to be copied and verified again.

    Their failed attempts start again from zero.

    Files whose local copy was already deleted cannot be re-sent and are reported.
    A verified file whose local copy changed is not re-sent over its verified
    copy: it becomes a conflict (see ``suprsync resolve``). Hashing happens
    outside any transaction. ``progress`` is called with the number of files done.
    """
    report = RecheckReport()
    wanted = _abs(paths) or []

    def rows(session):  # type: ignore[no-untyped-def]
        query = select(F.id, F.local_path, F.local_md5sum, F.remote_md5sum, F.removed,
                       F.archive_name).where(F.local_path.in_(wanted))
        if archive_name is not None:
            query = query.where(F.archive_name == archive_name)
        return session.execute(query).all()

    found = manager.read(rows, what="recheck lookup")
    seen = {r.local_path for r in found}
    report.not_found = [p for p in wanted if p not in seen]
    for done, (file_id, path, old_md5, remote_md5, removed, archive) in enumerate(found):
        if progress is not None:
            progress(done + len(report.not_found))
        if removed is not None:
            report.gone.append(path)
            continue
        try:
            new_md5 = md5_file(path)
        except OSError as exc:
            log.error("recheck: cannot read %s: %s", path, exc.strerror)
            report.gone.append(path)
            continue
        verified = remote_md5 is not None and remote_md5 == old_md5
        if verified and new_md5 != old_md5:
            detail = (f"recheck: the local file changed after its copy was verified "
                      f"(md5 {old_md5} -> {new_md5})")
            conflict = NewConflict(file_id, CHANGED, None, detail)
            manager.write(lambda s, c=conflict, a=archive: record_conflicts(
                s, a, [c], manager.clock()), what="record conflict")
            log.error("conflict: %s (file id %s): %s; the verified remote copy is kept",
                      path, file_id, detail)
            report.conflicts.append(path)
            continue
        if verified:
            manager.requeue(file_id)  # pinned: only the registered bytes are accepted
            manager.write(lambda s, i=file_id: s.execute(
                update(F).where(F.id == i).values(failed_copy_attempts=0)), what="recheck")
            report.queued.append(path)
            continue
        if new_md5 != old_md5:
            log.warning("recheck: %s changed since it was registered (md5 %s -> %s)",
                        path, old_md5, new_md5)
            report.changed.append(path)
        manager.write(
            lambda s, i=file_id, m=new_md5: s.execute(
                update(F).where(F.id == i, F.removed.is_(None))
                .values(local_md5sum=m, remote_md5sum=None, failed_copy_attempts=0)),
            what="recheck")
        report.queued.append(path)
    if progress is not None:
        progress(len(wanted))
    return report
