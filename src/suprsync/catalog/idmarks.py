"""Whether the ids a scan has passed still hold the rows it read.

Several steps read the files table in id order and keep the last id read, so that
the next call reads only newer rows. sqlite gives a new row the id after the highest
one present: once the newest rows are deleted (by another program), their ids go to
the next registrations, below an id already passed. A scan therefore also keeps a
mark of the row at its last id; while that row is still there, unchanged, every new
row has a higher id. On PostgreSQL ids come from a sequence and are never given twice.
"""

from __future__ import annotations

import hashlib

from sqlalchemy import select
from sqlalchemy.orm import Session

from .dialects import dialect_of
from .schema import SupRsyncFile

F = SupRsyncFile

#: The mark of an id no row holds.
NO_ROW = "-"


def row_mark(session: Session, file_id: int) -> str:
    """A digest of the row holding file_id now (NO_ROW when none does; "" where ids are
    never given twice, so that no mark ever differs)."""
    if not dialect_of(session).reuses_ids:
        return ""
    row = session.execute(select(F.local_path, F.remote_path, F.archive_name, F.timestamp)
                          .where(F.id == file_id)).first()
    if row is None:
        return NO_ROW
    text = repr(tuple(row)).encode("utf-8", "backslashreplace")
    return hashlib.blake2b(text, digest_size=8).hexdigest()


def ids_reused(session: Session, file_id: int, mark: str | None) -> bool:
    """True when the row at file_id is not the one marked: the newest rows were deleted
    since, and ids up to file_id may hold rows not read. No mark (None): nothing to
    compare, trusted."""
    return mark is not None and row_mark(session, file_id) != mark
