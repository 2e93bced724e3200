"""The deletion step: remove local copies whose remote copy is verified and old enough.

Before a local file is deleted, the destination is asked again: the remote copy
must still exist with the local file's size (and, with ``verify_md5``, the
recorded md5). A file that fails this check, or that changed locally after it
was copied, is queued to be copied again instead of being deleted.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from .catalog.schema import SupRsyncFile
from .catalog.store import SupRsyncFilesManager
from .paths import normalize_remote_path
from .transport.base import Transport, TransportError

log = logging.getLogger(__name__)

#: Rows handled per query (and per remote check) while deleting.
CHUNK = 500


@dataclass
class DeleteReport:
    """What one deletion step did."""

    deleted: list[str] = field(default_factory=list)
    already_gone: list[str] = field(default_factory=list)
    kept: list[tuple[str, str]] = field(default_factory=list)
    requeued: list[tuple[str, str]] = field(default_factory=list)
    error: str | None = None
    timed_out: bool = False


def delete_due(manager: SupRsyncFilesManager, archive_name: str, delete_after: float,
               transport: Transport | None = None, verify_md5: bool = False) -> DeleteReport:
    """Delete every verified, deletable file registered more than delete_after s ago.

    With a transport, each file's remote copy is checked first (see module doc).
    A file that cannot be deleted is logged and kept; the pass goes on.
    """
    report = DeleteReport()
    skip: set[int] = set()
    while True:
        due = [f for f in manager.get_deletable_files(archive_name, delete_after,
                                                      limit=CHUNK + len(skip))
               if f.id not in skip][:CHUNK]
        if not due:
            return report
        skip.update(f.id for f in due)
        if transport is not None:
            try:
                due = _confirmed_on_remote(manager, transport, due, verify_md5, report)
            except TransportError as exc:
                report.error = str(exc)
                report.timed_out = exc.timed_out
                log.error("not deleting anything now: cannot check the remote copies: %s", exc)
                return report
        removed = [r for r in (_delete_one(manager, row, report) for row in due) if r]
        manager.mark_removed_many(removed)


def _confirmed_on_remote(manager: SupRsyncFilesManager, transport: Transport,
                         rows: list[SupRsyncFile], verify_md5: bool,
                         report: DeleteReport) -> list[SupRsyncFile]:
    """The rows whose remote copy still matches; the others are re-queued."""
    rels = {}
    for row in rows:
        try:
            rels[row.id] = normalize_remote_path(row.remote_path)
        except ValueError:
            continue
    local: dict[int, os.stat_result] = {}
    confirmed = []
    for row in rows:
        try:
            local[row.id] = os.stat(row.local_path)
        except FileNotFoundError:
            confirmed.append(row)  # recorded as already gone
        except OSError as exc:
            report.kept.append((row.local_path, str(exc)))
    paths = sorted({rels[i] for i in local if i in rels})
    remote = transport.stat(paths)
    total = sum(st.st_size for st in local.values())
    sums = transport.checksums(paths, total_bytes=total) if verify_md5 else {}
    for row in rows:
        st = local.get(row.id)
        if st is None:
            continue
        rel = rels.get(row.id)
        reason = None
        there = remote.get(rel) if rel is not None else None
        if there is None:
            reason = "the remote copy is missing"
        elif there.size != st.st_size:
            reason = f"the remote copy has {there.size} bytes, the local file {st.st_size}"
        elif there.mtime != int(st.st_mtime):
            reason = "the local file was modified after it was copied (mtimes differ)"
        elif verify_md5 and sums.get(rel) != row.local_md5sum:
            reason = f"the remote md5 is now {sums.get(rel)}, expected {row.local_md5sum}"
        if reason is None:
            confirmed.append(row)
            continue
        log.error("not deleting %s: %s; queued to be copied again", row.local_path, reason)
        observed = sums.get(rel) if rel is not None else None
        manager.requeue(row.id, observed if observed != row.local_md5sum else None)
        report.requeued.append((row.local_path, reason))
    return confirmed


def _delete_one(manager: SupRsyncFilesManager, row: SupRsyncFile,
                report: DeleteReport) -> tuple[int, float] | None:
    """Delete one local copy; (file id, removed time) to record, or None if kept.

    The times of a chunk are recorded together; if the agent dies before that, the
    next pass finds these files gone and records them with removed = 0.
    """
    path = row.local_path
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            raise IsADirectoryError(f"{path!r} is a directory")
        os.remove(path)
    except FileNotFoundError:
        log.info("%s was already gone; recording it as removed", path)
        report.already_gone.append(path)
        return row.id, 0.0
    except OSError as exc:
        log.error("cannot delete %s (file id %s), keeping it: %s", path, row.id, exc)
        report.kept.append((path, str(exc)))
        return None
    log.info("deleted local copy %s: verified on the remote", path)
    report.deleted.append(path)
    return row.id, manager.clock()
