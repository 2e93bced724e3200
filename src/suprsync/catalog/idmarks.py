"""Whether the ids a scan has passed can hold rows it has not read.

Several steps read the files table in id order and keep the last id read, so that
the next call reads only newer rows. sqlite gives a new row the id after the highest
one present (the original schema has no AUTOINCREMENT): once another program deletes
the newest rows, their ids go to the next registrations, below an id already passed.

Only a deletion (or a change of id) that lowers the highest id lets sqlite give an
id again, and on sqlite two triggers count those in ``suprsync_meta_v0``. A scan
keeps the count beside its last id; when the count has moved, or the highest id is
below the last id read, the scan reads again. A third trigger removes what suprsync
keeps about a file (copies at further destinations, leases, conflicts, pins,
spellings) when its row is deleted, so that a row given the id later starts afresh.
On PostgreSQL ids come from a sequence and are never given twice.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from .dialects import dialect_of
from .meta import get_meta, install_counter
from .schema import (
    CatalogMeta,
    Conflict,
    DestinationClaim,
    DestinationCopy,
    FileClaim,
    PathKey,
    PinnedFile,
)
from .settings import FILES_TABLE

#: Meta key: how many times a deletion or a change of id lowered the highest file id.
NEWEST_KEY = "newest_rows_deleted"
_META = CatalogMeta.__tablename__
_BUMP = (f"BEGIN UPDATE {_META} SET value = CAST(value AS INTEGER) + 1 "
         f"WHERE key = '{NEWEST_KEY}'; END")
_LOWERED = f"OLD.id > coalesce((SELECT max(id) FROM {FILES_TABLE}), 0)"
_SATELLITES = (DestinationCopy, DestinationClaim, FileClaim, Conflict, PinnedFile, PathKey)

SQLITE_TRIGGERS = {
    "suprsync_newest_deleted_v0":
    f"CREATE TRIGGER IF NOT EXISTS suprsync_newest_deleted_v0 AFTER DELETE ON {FILES_TABLE} "
    f"WHEN {_LOWERED} {_BUMP}",
    "suprsync_newest_moved_v0":
    f"CREATE TRIGGER IF NOT EXISTS suprsync_newest_moved_v0 AFTER UPDATE OF id ON "
    f"{FILES_TABLE} WHEN {_LOWERED} {_BUMP}",
    "suprsync_rows_forgotten_v0":
    f"CREATE TRIGGER IF NOT EXISTS suprsync_rows_forgotten_v0 AFTER DELETE ON {FILES_TABLE} "
    "BEGIN " + " ".join(f"DELETE FROM {t.__tablename__} WHERE file_id = OLD.id;"
                        for t in _SATELLITES) + " END",
}


def install(session: Session) -> None:
    """Create the count and its triggers where ids can be given again (when missing)."""
    if dialect_of(session).reuses_ids:
        install_counter(session, NEWEST_KEY, SQLITE_TRIGGERS)


def id_mark(session: Session) -> str | None:
    """The count now, kept beside a scan's last id; None where ids are never given
    twice or no count is kept."""
    if not dialect_of(session).reuses_ids:
        return None
    return get_meta(session, NEWEST_KEY)


def ids_reused(session: Session, file_id: int, mark: str | None, top: int) -> bool:
    """True when ids up to file_id may hold rows a scan that ended there with ``mark``
    has not read: the highest id (``top``) is below it, or the count moved since."""
    if top < file_id:
        return True
    return mark is not None and id_mark(session) != mark
