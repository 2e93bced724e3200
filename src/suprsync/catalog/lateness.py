"""Files registered into a timecode dir after a finalization file described it.

Each finalization file of a dir describes the rows of the dir up to a file id:
the first one every row below its own ``finalize_file_id``, a supplement (table
``suprsync_supplements_v0``) every row up to its ``covers_up_to``. A non-ignored
row of a finalized dir above the highest of these bounds is *late*: downstream
believes the dir complete without it. Rows under ``<tc>/suprsync/`` (finalization
files, which downstream skips) are never late.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, inspect, select
from sqlalchemy.orm import Session

from ..paths import timecode_of
from .dialects import CatalogDialect
from .dirrows import in_dir
from .idmarks import ids_reused
from .meta import get_meta, set_meta
from .quarantine import printable
from .schema import NOT_IGNORED, Supplement, SupRsyncFile, TimecodeDir

F = SupRsyncFile
TD = TimecodeDir
S = Supplement

#: Subdirectory of a timecode dir that holds finalization files.
SUPRSYNC_SUBDIR = "suprsync"
#: Ids below the last scanned one that are read again where a row can commit after
#: rows with higher ids (PostgreSQL); see :func:`rescan_ids`.
RESCAN_IDS = 5000
#: Meta key prefix: highest file id of the archive scanned for late files, and the dirs
#: holding late files no finalization file describes yet (see LateScan).
LATE_SCAN_PREFIX = "late_scan:"


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


def rescan_ids(dialect: CatalogDialect) -> int:
    """How many ids below the last scanned one a scan for late files reads again: none
    where rows commit in the order of their ids (sqlite), else RESCAN_IDS."""
    return 0 if dialect.ids_commit_in_order else RESCAN_IDS


def own_file(remote_path: str, timecode: int) -> bool:
    """True for a file under ``<tc>/suprsync/`` (a finalization file)."""
    return remote_path.startswith(f"{timecode}/{SUPRSYNC_SUBDIR}/")


#: Engines whose catalog has the supplements table (once there, it stays).
_with_supplements: weakref.WeakSet[Any] = weakref.WeakSet()


def has_supplements(session: Session) -> bool:
    """True when the catalog has the supplements table (read-only commands do not add it)."""
    engine = session.get_bind()
    if engine in _with_supplements:
        return True
    found = inspect(engine).has_table(S.__tablename__)
    if found:
        _with_supplements.add(engine)
    return found


def described_bounds(session: Session, archive_name: str,
                     only: Collection[int] | None = None) -> dict[int, int]:
    """Per finalized dir of the archive (of the dirs in ``only``), the highest file id
    its finalization files describe.

    A dir finalized without a recorded file id (written so by another program) is left
    out: what it described is unknown.
    """
    if only is not None and not only:
        return {}
    dirs = [] if only is None else [TD.timecode.in_(sorted(only))]
    sups = [] if only is None else [S.timecode.in_(sorted(only))]
    bounds = {int(tc): int(fid) for tc, fid in session.execute(
        select(TD.timecode, func.max(TD.finalize_file_id))
        .where(TD.archive_name == archive_name, TD.finalized.is_(True),
               TD.finalize_file_id.is_not(None), *dirs)
        .group_by(TD.timecode))}
    if bounds and has_supplements(session):
        for tc, up_to in session.execute(
                select(S.timecode, func.max(S.covers_up_to))
                .where(S.archive_name == archive_name, *sups).group_by(S.timecode)):
            if int(tc) in bounds:
                bounds[int(tc)] = max(bounds[int(tc)], int(up_to))
    return bounds


def _lowest_bound(session: Session, archive_name: str) -> int | None:
    """The lowest file id a finalized dir of the archive was described up to (None:
    no finalized dir has one)."""
    low = session.scalar(select(func.min(TD.finalize_file_id)).where(
        TD.archive_name == archive_name, TD.finalized.is_(True),
        TD.finalize_file_id.is_not(None)))
    return None if low is None else int(low)


def find_late_files(session: Session, archive_name: str, after_id: int = 0,
                    up_to: int | None = None) -> list[LateFile]:
    """Late files of the archive with an id above after_id (and at most up_to).

    The scan is a primary-key range that reads 15 characters of each remote path;
    the bounds are read for the dirs it met, 5,000 rows at a time, and only the rows
    found late are read whole. From the first id (no scan before), it starts at the
    lowest bound.
    """
    low = after_id
    if low <= 0:
        lowest = _lowest_bound(session, archive_name)
        if lowest is None:
            return []
        low = lowest
    # archive_name || '' keeps the planner on the primary-key range.
    query = (select(F.id, func.substr(F.remote_path, 1, 15))
             .where(F.id > low, F.archive_name.concat("") == archive_name, NOT_IGNORED))
    if up_to is not None:
        query = query.where(F.id <= up_to)
    heads = session.execute(query.execution_options(yield_per=5000))
    bounds: dict[int, int | None] = {}  # per dir met: its bound, None when not finalized
    found: dict[int, int] = {}
    seen: list[tuple[int, int]] = []

    def judge() -> None:
        new = {tc for _, tc in seen} - bounds.keys()
        if new:
            read = described_bounds(session, archive_name, new)
            bounds.update({tc: read.get(tc) for tc in new})
        for file_id, tc in seen:
            bound = bounds[tc]
            if bound is not None and file_id > bound:
                found[file_id] = tc
        seen.clear()

    for file_id, head in heads:
        if not isinstance(head, str):
            continue
        tc = timecode_of(head)
        if tc is None or own_file(head, tc):
            continue
        seen.append((int(file_id), tc))
        if len(seen) >= 5000:
            judge()
    judge()
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


def late_in_dirs(session: Session, archive_name: str, timecodes: set[int]) -> list[LateFile]:
    """Late files of these finalized dirs, each dir read by its range of the remote-path
    index (rows whose remote path is not text are left out, as find_late_files does)."""
    bounds = described_bounds(session, archive_name, timecodes)
    late: list[LateFile] = []
    for tc in sorted(timecodes & set(bounds)):
        for file_id, remote, local in session.execute(
                select(F.id, F.remote_path, F.local_path)
                .where(in_dir(session, archive_name, tc), F.id > bounds[tc], NOT_IGNORED)
                .order_by(F.id)):
            if isinstance(remote, str) and not own_file(remote, tc):
                late.append(LateFile(tc, int(file_id), str(printable(remote)),
                                     str(printable(local))))
    return late


@dataclass(frozen=True)
class LateScan:
    """What the agents of an archive know of its late files, kept in the catalog.

    ``scanned_up_to``: ids up to this one were scanned for late files; ``dirs``: the
    dirs that held late files not yet described at the last look. A new process scans
    only the ids above (less :func:`rescan_ids`) and reads the dirs listed, not the history.
    ``mark``: the count of idmarks then (None when not kept).
    """

    scanned_up_to: int
    dirs: frozenset[int]
    mark: str | None = None


def load_late_scan(session: Session, archive_name: str) -> LateScan | None:
    """The kept scan state, or None when there is none (or it is not what suprsync wrote)."""
    value = get_meta(session, LATE_SCAN_PREFIX + archive_name)
    if value is None:
        return None
    try:
        d = json.loads(value)
        mark = d.get("mark")
        return LateScan(int(d["scanned_up_to"]), frozenset(int(tc) for tc in d["dirs"]),
                        mark if isinstance(mark, str) else None)
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def keep_late_scan(session: Session, archive_name: str, scanned_up_to: int,
                   mark: str | None, dirs: set[int], cleared: set[int]) -> None:
    """Merge this process's view into the kept state: the highest scan whose ids have
    not been given again since, the dirs kept before except those it found described,
    and the dirs it holds late files of."""
    there = load_late_scan(session, archive_name)
    top, top_mark = scanned_up_to, mark
    highest = int(session.scalar(select(func.max(F.id))) or 0)
    if there is not None and there.scanned_up_to > scanned_up_to \
            and not ids_reused(session, there.scanned_up_to, there.mark, highest):
        top, top_mark = there.scanned_up_to, there.mark
    merged = (set() if there is None else set(there.dirs) - cleared) | dirs
    if there is not None and there == LateScan(top, frozenset(merged), top_mark):
        return
    set_meta(session, LATE_SCAN_PREFIX + archive_name,
             json.dumps({"scanned_up_to": top, "dirs": sorted(merged), "mark": top_mark}))

