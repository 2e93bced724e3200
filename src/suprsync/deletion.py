"""The deletion step: remove local copies whose remote copy is verified and old enough."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from .catalog.store import SupRsyncFilesManager

log = logging.getLogger(__name__)

#: Rows fetched per query while deleting.
CHUNK = 500


@dataclass
class DeleteReport:
    """What one deletion step did."""

    deleted: list[str] = field(default_factory=list)
    already_gone: list[str] = field(default_factory=list)
    kept: list[tuple[str, str]] = field(default_factory=list)


def delete_due(manager: SupRsyncFilesManager, archive_name: str, delete_after: float,
               skip: set[int] | None = None) -> DeleteReport:
    """Delete every verified, deletable file registered more than delete_after s ago.

    A file that cannot be deleted is logged, kept, and added to ``skip`` (when
    given) so that later calls do not try it again and again.
    """
    report = DeleteReport()
    skip = skip if skip is not None else set()
    while True:
        due = [f for f in manager.get_deletable_files(archive_name, delete_after,
                                                      limit=CHUNK + len(skip))
               if f.id not in skip]
        if not due:
            return report
        for row in due[:CHUNK]:
            _delete_one(manager, row.id, row.local_path, report, skip)


def _delete_one(manager: SupRsyncFilesManager, file_id: int, path: str, report: DeleteReport,
                skip: set[int]) -> None:
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            raise IsADirectoryError(f"{path!r} is a directory")
        os.remove(path)
    except FileNotFoundError:
        log.info("%s was already gone; recording it as removed", path)
        manager.mark_removed(file_id, 0)
        report.already_gone.append(path)
        return
    except OSError as exc:
        log.error("cannot delete %s (file id %s), keeping it: %s", path, file_id, exc)
        report.kept.append((path, str(exc)))
        skip.add(file_id)
        return
    manager.mark_removed(file_id, manager.clock())
    log.info("deleted local copy %s: verified on the remote", path)
    report.deleted.append(path)
