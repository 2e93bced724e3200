"""Where each local directory resolved when suprsync first saw a file in it.

A directory whose path goes through a symlink is fine as long as it still
resolves to the same place; one that resolves elsewhere later (a component
replaced by a symlink) is not read from.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from sqlalchemy import select
from sqlalchemy.orm import Session

from .inserts import insert_missing
from .schema import LocalDir

CHUNK = 500


def known_dirs(session: Session, dirs: Iterable[str]) -> dict[str, str]:
    """The recorded real path of each of these directories that has one."""
    wanted = sorted(set(dirs))
    found: dict[str, str] = {}
    for start in range(0, len(wanted), CHUNK):
        chunk = wanted[start:start + CHUNK]
        for path, real in session.execute(select(LocalDir.path, LocalDir.real)
                                          .where(LocalDir.path.in_(chunk))):
            found[path] = real
    return found


def record_dirs(session: Session, reals: Mapping[str, str]) -> None:
    """Record directories not recorded yet (a recorded one keeps its first real path)."""
    if not reals:
        return
    known = known_dirs(session, reals)
    new = [{"path": d, "real": r} for d, r in reals.items() if d not in known]
    insert_missing(session, LocalDir.__table__, new)
