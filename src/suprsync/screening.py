"""Screening a claimed batch before anything is sent.

For each row: does its destination meet another row's (collisions.py)? Is its
md5 pinned? Does its local directory still resolve where it did? The catalog
is read in a few short transactions; conflicts found are recorded (and logged)
once.
"""

from __future__ import annotations

import bisect
import logging
import os
import stat
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from .catalog.conflicts import COLLISION, NewConflict, pinned_ids, record_conflicts
from .catalog.localdirs import known_dirs, record_dirs
from .catalog.pathkeys import as_partner, partners, scan_path_keys
from .catalog.schema import SupRsyncFile
from .catalog.store import SupRsyncFilesManager
from .collisions import Action, Partner, judge
from .events import event
from .paths import normalize_remote_path, parents

log = logging.getLogger(__name__)


@dataclass
class Screened:
    """What to do with each row of a batch."""

    send: list[SupRsyncFile] = field(default_factory=list)
    #: Rows another row's verified copy already satisfies, with their normalized path.
    verify_only: list[tuple[SupRsyncFile, str]] = field(default_factory=list)
    #: Rows not handled now (waiting, or conflicts).
    held: set[int] = field(default_factory=set)
    #: Rows that accept only their registered md5.
    strict: set[int] = field(default_factory=set)
    #: Local directories that resolve elsewhere than when first seen, with the reason.
    bad_dirs: dict[str, str] = field(default_factory=dict)
    #: File ids of conflicts recorded now.
    new_conflicts: list[int] = field(default_factory=list)


class PartnerIndex:
    """Partners by normalized path, for the lookups of one batch."""

    def __init__(self, found: Iterable[Partner]) -> None:
        self.by_key: dict[str, list[Partner]] = defaultdict(list)
        for p in found:
            self.by_key[p.key].append(p)
        self.keys = sorted(self.by_key)

    def meeting(self, key: str) -> list[Partner]:
        """Partners at key, at one of its parents, or below it."""
        out = list(self.by_key.get(key, ()))
        for parent in parents(key):
            out += self.by_key.get(parent, ())
        prefix = key + "/"
        at = bisect.bisect_left(self.keys, prefix)
        while at < len(self.keys) and self.keys[at].startswith(prefix):
            out += self.by_key[self.keys[at]]
            at += 1
        return out


def _key(row: SupRsyncFile) -> str | None:
    try:
        return normalize_remote_path(row.remote_path)
    except (ValueError, TypeError):
        return None  # staging marks it unsendable


def screen_batch(manager: SupRsyncFilesManager, archive_name: str,
                 batch: list[SupRsyncFile], max_copy_attempts: int | None, now: float,
                 notes: set[tuple[int, int | None]]) -> Screened:
    """Judge every row of a claimed batch; record new conflicts."""
    out = Screened()
    keys = {row.id: k for row in batch if (k := _key(row)) is not None}
    manager.write(scan_path_keys, what="scan remote path spellings")
    ids = [row.id for row in batch]

    def read(session):  # type: ignore[no-untyped-def]
        found = partners(session, archive_name, keys.values(), max_copy_attempts,
                         known=set(keys))
        return found, pinned_ids(session, ids)

    found, out.strict = manager.read(read, what="screen batch")
    # The batch's own rows meet each other too; they are in memory already.
    found += [as_partner(row, keys[row.id], max_copy_attempts) for row in batch
              if row.id in keys]
    index = PartnerIndex(found)
    conflicts: list[NewConflict] = []
    for row in batch:
        key = keys.get(row.id)
        if key is None:
            out.send.append(row)
            continue
        verdict = judge(row.id, key, row.local_md5sum, index.meeting(key))
        if verdict.action is Action.SEND:
            out.send.append(row)
        elif verdict.action is Action.VERIFY_ONLY:
            out.verify_only.append((row, key))
        elif verdict.action is Action.WAIT:
            out.held.add(row.id)
            other = verdict.other.id if verdict.other else None
            if (row.id, other) not in notes:
                notes.add((row.id, other))
                log.warning("not sending %s (file id %s) to %r yet: %s", row.local_path,
                            row.id, key, verdict.describe(), extra=event("held", row.local_path))
        else:
            out.held.add(row.id)
            conflicts.append(NewConflict(row.id, COLLISION,
                                         verdict.other.id if verdict.other else None,
                                         verdict.describe()))
    if conflicts:
        new = manager.write(lambda s: record_conflicts(s, archive_name, conflicts, now),
                            what="record conflicts")
        by_id = {row.id: row for row in batch}
        for c in new:
            row = by_id[c.file_id]
            log.error("conflict: %s (file id %s) is not sent to %r and keeps its local file: "
                      "%s; resolve it with 'suprsync resolve'", row.local_path, row.id,
                      keys.get(row.id), c.detail, extra=event("conflict", row.local_path))
        out.new_conflicts = [c.file_id for c in new]
    out.bad_dirs = check_local_dirs(manager, [(r.local_path, r.timestamp) for r in out.send])
    return out


def _newer_link(folder: str, registered: float) -> str | None:
    """The first symlink on the way to folder that was made after ``registered``."""
    path = "/"
    for part in folder.strip("/").split("/"):
        path = os.path.join(path, part)
        try:
            st = os.lstat(path)
        except OSError:
            return None
        if stat.S_ISLNK(st.st_mode) and st.st_ctime > registered:
            return path
        if stat.S_ISLNK(st.st_mode):
            path = os.path.realpath(path)
    return None


def check_local_dirs(manager: SupRsyncFilesManager,
                     files: Iterable[tuple[str, float]], record: bool = True) -> dict[str, str]:
    """Directories of these files (local path, registration time) not to be read, with why.

    A directory is recorded with where it resolves the first time it is seen. A
    recorded one must still resolve there. One seen for the first time (a row
    another program wrote) is refused when a symlink on its way is younger than
    the oldest file registered in it: that link was not there at registration.
    ``record=False`` only looks (nothing is written).
    """
    reals: dict[str, str] = {}
    oldest: dict[str, float] = {}
    for path, registered in files:
        if not isinstance(path, str):
            continue
        folder = os.path.dirname(path)
        if folder not in reals:
            reals[folder] = os.path.realpath(folder)
        if isinstance(registered, (int, float)):
            oldest[folder] = min(oldest.get(folder, registered), registered)
    if not reals:
        return {}
    known = manager.read(lambda s: known_dirs(s, reals), what="local dirs")
    bad = {}
    for folder, real in reals.items():
        first = known.get(folder)
        if first is not None and first != real:
            bad[folder] = (f"{folder!r} now resolves to {real!r} through a symbolic link, "
                           f"not to {first!r} as when its files were first seen")
        elif first is None and real != folder:
            link = _newer_link(folder, oldest.get(folder, 0.0))
            if link is not None:
                bad[folder] = (f"{link!r} on the way to {folder!r} is a symbolic link made "
                               f"after the files in it were registered")
    new = {d: r for d, r in reals.items() if d not in known and d not in bad}
    if new and record:
        manager.write(lambda s: record_dirs(s, new), what="record local dirs")
    return bad
