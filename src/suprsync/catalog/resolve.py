"""The operator's answer to a conflict: keep the remote copy, or send the new content."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..collisions import meeting
from ..hashing import md5_file
from ..paths import check_local_file, normalize_remote_path
from .conflicts import CHANGED, clear_conflicts, unpin
from .pathkeys import partners
from .requeue import requeue_row
from .schema import Conflict, SupRsyncFile
from .store import SupRsyncFilesManager

log = logging.getLogger(__name__)

F = SupRsyncFile
KEEP_REMOTE = "keep-remote"
SEND_NEW = "send-new"


@dataclass
class ResolveReport:
    """What a resolve did, per local path."""

    resolved: list[tuple[str, str]] = field(default_factory=list)
    superseded: list[tuple[int, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)


def resolve(manager: SupRsyncFilesManager, paths: Sequence[str], action: str,
            archive_name: str | None = None) -> ResolveReport:
    """Resolve the conflicts of the rows naming these local paths.

    ``keep-remote``: the verified remote copy stays as it is. A row whose local
    file changed after verification stays verified and is never deleted by
    suprsync (deletable false); a row that would have replaced another's copy
    is ignored. Both keep their local files.

    ``send-new``: the local file's current content is sent to the row's
    destination, replacing what is there. Rows whose verified copy it replaces
    stop reading verified and are ignored (their local files, if any, are kept).
    """
    if action not in (KEEP_REMOTE, SEND_NEW):
        raise ValueError(f"unknown action {action!r}")
    report = ResolveReport()
    wanted = [os.path.abspath(p) for p in paths]

    def rows(session: Session):  # type: ignore[no-untyped-def]
        query = (select(F, Conflict.kind).join(Conflict, Conflict.file_id == F.id)
                 .where(F.local_path.in_(wanted)))
        if archive_name is not None:
            query = query.where(F.archive_name == archive_name)
        return session.execute(query).all()

    found = manager.read(rows, what="conflicts of paths")
    seen = {row.local_path for row, _ in found}
    report.not_found = [p for p in wanted if p not in seen]
    for row, kind in found:
        try:
            if action == KEEP_REMOTE:
                _keep_remote(manager, row, kind)
            else:
                _send_new(manager, row, kind, report)
        except (OSError, ValueError) as exc:
            report.failed.append((row.local_path, str(exc)))
            continue
        report.resolved.append((row.local_path, kind))
        log.warning("conflict of %s (file id %s) resolved by the operator: %s",
                    row.local_path, row.id, action)
    return report


def _keep_remote(manager: SupRsyncFilesManager, row: SupRsyncFile, kind: str) -> None:
    def apply(session: Session) -> None:
        target = session.get(F, row.id)
        if target is None:
            return
        if kind == CHANGED:
            target.deletable = False
        else:
            target.ignore = True
        clear_conflicts(session, [row.id])

    manager.write(apply, what="resolve conflict")


def _send_new(manager: SupRsyncFilesManager, row: SupRsyncFile, kind: str,
              report: ResolveReport) -> None:
    check_local_file(row.local_path)
    new_md5 = md5_file(row.local_path)  # outside any transaction
    key = normalize_remote_path(row.remote_path)

    def apply(session: Session) -> None:
        target = session.get(F, row.id)
        if target is None:
            return
        old = target.remote_md5sum if kind == CHANGED else None
        for other in partners(session, target.archive_name, [key]):
            if other.id == target.id or not other.verified or meeting(key, other.key) is None:
                continue
            loser = session.get(F, other.id)
            if loser is not None:
                old = old or loser.remote_md5sum
                loser.remote_md5sum = None
                loser.ignore = True
                report.superseded.append((other.id, other.key))
                log.warning("file id %s at %r is superseded by %s at the operator's request",
                            other.id, other.key, row.local_path)
        # What the destination holds now: the next copy re-sends whatever it looks like.
        requeue_row(session, target, old if old != new_md5 else None, local_md5=new_md5,
                    reset_attempts=True)
        unpin(session, [row.id])
        clear_conflicts(session, [row.id])

    manager.write(apply, what="resolve conflict")
