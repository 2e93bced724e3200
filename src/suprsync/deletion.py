"""The deletion step: remove local copies whose remote copies are verified and old enough.

A local file is deleted only when every row that names it (in any archive) is
verified, deletable, free of conflicts and old enough for its own archive's
rule (other archives' rules are the ones their agents published in the
catalog; an archive that published none keeps the file). Ignored rows and rows
already marked removed do not need the file.

Before a local file is deleted, the destination is asked again for each of
this archive's rows that name it: the remote copy must still exist with the
local file's size and mtime (and, with ``verify_md5``, the recorded md5). When
it does not, the local file is hashed: if it still holds the registered bytes,
the row is queued to be sent again (its md5 pinned, so only those bytes are
accepted); if it changed after its copy was verified, the row becomes a
conflict and both copies are kept.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from .catalog.conflicts import CHANGED, NewConflict, conflicted_ids, record_conflicts
from .catalog.meta import delete_rules, publish_delete_rule
from .catalog.schema import SupRsyncFile
from .catalog.store import SupRsyncFilesManager
from .hashing import md5_file
from .paths import check_local_file, normalize_remote_path
from .screening import check_local_dirs
from .transport.base import Transport, TransportError

log = logging.getLogger(__name__)

F = SupRsyncFile

#: Rows handled per query (and per remote check) while deleting.
CHUNK = 500


@dataclass
class DeleteReport:
    """What one deletion step did."""

    deleted: list[str] = field(default_factory=list)
    already_gone: list[str] = field(default_factory=list)
    kept: list[tuple[str, str]] = field(default_factory=list)
    requeued: list[tuple[str, str]] = field(default_factory=list)
    conflicts: list[tuple[str, str]] = field(default_factory=list)
    error: str | None = None
    timed_out: bool = False


def _verified(row: SupRsyncFile) -> bool:
    return row.remote_md5sum is not None and row.remote_md5sum == row.local_md5sum


def _sharers(session: Session, paths: Sequence[str]) -> list[SupRsyncFile]:
    rows: list[SupRsyncFile] = []
    wanted = sorted(set(paths))
    for start in range(0, len(wanted), CHUNK):
        rows += session.scalars(select(F).where(F.local_path.in_(wanted[start:start + CHUNK])))
    return rows


def why_kept(row: SupRsyncFile, now: float, rules: dict[str, float | None],
             conflicted: set[int]) -> str | None:
    """Why another row sharing a local file still needs it, or None when it does not."""
    if row.removed is not None or row.ignore:
        return None
    who = f"file id {row.id} of archive {row.archive_name!r}"
    if row.id in conflicted:
        return f"{who} is in conflict"
    if not _verified(row):
        return f"{who} is not verified yet"
    if row.deletable is not None and not row.deletable:
        return f"{who} is not deletable"
    if row.archive_name not in rules:
        return f"{who}: its archive published no deletion rule"
    after = rules[row.archive_name]
    if after is None:
        return f"{who}: its archive never deletes"
    if not now > row.timestamp + after:
        return f"{who} is not old enough for its archive's rule"
    return None


def delete_due(manager: SupRsyncFilesManager, archive_name: str, delete_after: float,
               transport: Transport | None = None, verify_md5: bool = False,
               notes: set[str] | None = None) -> DeleteReport:
    """Delete every local file due for deletion (see the module doc); report what happened.

    With a transport, each remote copy is checked first. A file that cannot be
    deleted is logged (once per ``notes``) and kept; the pass goes on.
    """
    report = DeleteReport()
    notes = notes if notes is not None else set()
    manager.write(lambda s: publish_delete_rule(s, archive_name, delete_after),
                  what="publish deletion rule")
    skip: set[int] = set()
    while True:
        due = [f for f in manager.get_deletable_files(archive_name, delete_after,
                                                      limit=CHUNK + len(skip))
               if f.id not in skip][:CHUNK]
        if not due:
            return report
        skip.update(f.id for f in due)
        now = manager.clock()
        groups, marks = _groups(manager, archive_name, due, now, delete_after, report, notes)
        rows = [r for group in groups.values() for r in group]
        if transport is not None and rows:
            try:
                good = _confirmed_on_remote(manager, transport, rows, verify_md5, report)
            except TransportError as exc:
                report.error = str(exc)
                report.timed_out = exc.timed_out
                log.error("not deleting anything now: cannot check the remote copies: %s", exc)
                return report
            groups = {p: g for p, g in groups.items() if all(r.id in good for r in g)}
        removed = [(file_id, when) for path in groups
                   if (when := _delete_one(manager, path, report)) is not None
                   for file_id in marks[path]]
        manager.mark_removed_many(removed)


def _groups(manager: SupRsyncFilesManager, archive_name: str, due: list[SupRsyncFile],
            now: float, delete_after: float, report: DeleteReport,
            notes: set[str]) -> tuple[dict[str, list[SupRsyncFile]], dict[str, list[int]]]:
    """For the paths no other row still needs: local path -> this archive's rows to
    check, and local path -> every row to mark removed once the file is deleted."""

    def read(session: Session):  # type: ignore[no-untyped-def]
        sharers = _sharers(session, [r.local_path for r in due])
        archives = sorted({r.archive_name for r in sharers} - {archive_name})
        rules = delete_rules(session, archives)
        rules[archive_name] = float(delete_after)
        return sharers, rules, conflicted_ids(session, [r.id for r in sharers])

    sharers, rules, conflicted = manager.read(read, what="rows sharing local files")
    bad_dirs = check_local_dirs(manager, [(r.local_path, r.timestamp) for r in due])
    by_path: dict[str, list[SupRsyncFile]] = defaultdict(list)
    for row in sharers:
        by_path[row.local_path].append(row)
    groups: dict[str, list[SupRsyncFile]] = {}
    marks: dict[str, list[int]] = {}
    for path in dict.fromkeys(r.local_path for r in due):
        reasons = [why for row in by_path[path] if (why := why_kept(row, now, rules, conflicted))]
        if os.path.dirname(path) in bad_dirs:
            reasons.insert(0, bad_dirs[os.path.dirname(path)])
        if reasons:
            report.kept.append((path, reasons[0]))
            if path not in notes:
                notes.add(path)
                log.info("keeping %s for now: %s", path, reasons[0])
            continue
        groups[path] = [r for r in by_path[path] if r.archive_name == archive_name
                        and r.removed is None and not r.ignore]
        marks[path] = [r.id for r in by_path[path] if r.removed is None]
    return groups, marks


def _confirmed_on_remote(manager: SupRsyncFilesManager, transport: Transport,
                         rows: list[SupRsyncFile], verify_md5: bool,
                         report: DeleteReport) -> set[int]:
    """Ids of the rows whose remote copy still matches; the others are handled here."""
    rels = {}
    for row in rows:
        try:
            rels[row.id] = normalize_remote_path(row.remote_path)
        except (ValueError, TypeError):
            continue
    local: dict[int, os.stat_result] = {}
    confirmed: set[int] = set()
    for row in rows:
        try:
            local[row.id] = check_local_file(row.local_path)
        except FileNotFoundError:
            confirmed.add(row.id)  # recorded as already gone
        except OSError as exc:
            _changed(manager, row, f"the local file is no longer a regular file: {exc}", report)
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
            reason = "the local file's mtime differs from its copy's"
        elif verify_md5 and sums.get(rel) != row.local_md5sum:
            reason = f"the remote md5 is now {sums.get(rel)}, expected {row.local_md5sum}"
        if reason is None:
            confirmed.add(row.id)
        elif _local_intact(manager, row, reason, report):
            if rel is not None and there is not None and rel not in sums:
                sums.update(transport.checksums([rel], total_bytes=there.size))
            observed = sums.get(rel) if rel is not None else None
            if observed == row.local_md5sum:
                confirmed.add(row.id)  # same bytes, only the mtime moved
                continue
            log.error("not deleting %s: %s; its local file still holds the registered bytes, "
                      "so it is queued to be sent again", row.local_path, reason)
            manager.requeue(row.id, observed)
            report.requeued.append((row.local_path, reason))
    return confirmed


def _local_intact(manager: SupRsyncFilesManager, row: SupRsyncFile, reason: str,
                  report: DeleteReport) -> bool:
    """True when the local file still has the registered md5; else record a conflict."""
    try:
        current = md5_file(row.local_path)
    except OSError as exc:
        report.kept.append((row.local_path, f"{reason}; cannot hash it: {exc.strerror or exc}"))
        log.error("not deleting %s: %s; cannot hash it: %s", row.local_path, reason, exc)
        return False
    if current == row.local_md5sum:
        return True
    _changed(manager, row, f"{reason}: the local file changed after its copy was verified "
                           f"(md5 {row.local_md5sum} -> {current})", report)
    return False


def _changed(manager: SupRsyncFilesManager, row: SupRsyncFile, detail: str,
             report: DeleteReport) -> None:
    conflict = NewConflict(row.id, CHANGED, None, detail)
    new = manager.write(lambda s: record_conflicts(s, row.archive_name, [conflict],
                                                   manager.clock()), what="record conflict")
    report.conflicts.append((row.local_path, detail))
    if new:
        log.error("conflict: not deleting %s (file id %s) and not sending it again: %s; the "
                  "verified remote copy is kept; resolve it with 'suprsync resolve'",
                  row.local_path, row.id, detail)


def _delete_one(manager: SupRsyncFilesManager, path: str,
                report: DeleteReport) -> float | None:
    """Delete one local file; the removed time to record, or None if kept.

    The times of a chunk are recorded together; if the agent dies before that, the
    next pass finds these files gone and records them with removed = 0.
    """
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            raise IsADirectoryError(f"{path!r} is a directory")
        os.remove(path)
    except FileNotFoundError:
        log.info("%s was already gone; recording it as removed", path)
        report.already_gone.append(path)
        return 0.0
    except OSError as exc:
        log.error("cannot delete %s, keeping it: %s", path, exc)
        report.kept.append((path, str(exc)))
        return None
    log.info("deleted local copy %s: verified on the remote", path)
    report.deleted.append(path)
    return manager.clock()
