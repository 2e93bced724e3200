"""How many rows an archive has, without counting its history on every call.

A count is kept in the catalog (``suprsync_meta_v0``, key ``num_files:<archive>``)
with the highest file id it covers and the catalog's *deletion mark* when it was
made; a later count adds only the rows above that id. Programs sharing the catalog
append rows; when one deletes rows or moves them to another archive the mark
changes and the archive is counted again.

The mark: on sqlite, a number that triggers suprsync adds to the files table raise
on every deletion (and every change of a row's id or archive), whoever makes it;
on PostgreSQL, the table's count of deleted rows in the statistics views, and a
count older than :data:`FULL_COUNT_INTERVAL` is redone (a row moved to another
archive leaves no trace there). Without a mark, the same interval applies.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from .dialects import STATISTICS, TRIGGERS, dialect_of
from .meta import get_meta, install_counter, set_meta
from .schema import CatalogMeta, SupRsyncFile
from .settings import FILES_TABLE

F = SupRsyncFile

#: Seconds after which a count without an exact mark is redone.
FULL_COUNT_INTERVAL = 600.0
#: New rows after which the stored count is brought forward.
STORE_STEP = 1000
#: Meta key of the deletion mark kept by the sqlite triggers.
MARK_KEY = "rows_deleted"
COUNT_PREFIX = "num_files:"
_META = CatalogMeta.__tablename__

#: sqlite: raise the mark on every deletion and on every change of id or archive.
SQLITE_TRIGGERS = {
    "suprsync_rows_deleted_v0":
    f"CREATE TRIGGER IF NOT EXISTS suprsync_rows_deleted_v0 AFTER DELETE ON {FILES_TABLE} "
    f"BEGIN UPDATE {_META} SET value = CAST(value AS INTEGER) + 1 "
    f"WHERE key = '{MARK_KEY}'; END",
    "suprsync_rows_moved_v0":
    f"CREATE TRIGGER IF NOT EXISTS suprsync_rows_moved_v0 AFTER UPDATE OF id, archive_name "
    f"ON {FILES_TABLE} WHEN OLD.id IS NOT NEW.id OR OLD.archive_name IS NOT NEW.archive_name "
    f"BEGIN UPDATE {_META} SET value = CAST(value AS INTEGER) + 1 "
    f"WHERE key = '{MARK_KEY}'; END",
}


@dataclass(frozen=True)
class Count:
    """Rows of an archive with an id up to ``top``, the mark then, and when counted whole."""

    top: int
    rows: int
    mark: int | None
    counted_at: float

    def as_text(self) -> str:
        return json.dumps({"top": self.top, "rows": self.rows, "mark": self.mark,
                           "counted_at": self.counted_at})


def parse(value: str | None) -> Count | None:
    """A stored count, or None for a missing or malformed one (others may write the table)."""
    if value is None:
        return None
    try:
        d = json.loads(value)
        count = Count(int(d["top"]), int(d["rows"]),
                      None if d["mark"] is None else int(d["mark"]), float(d["counted_at"]))
    except (ValueError, TypeError, KeyError):
        return None
    if count.top < 0 or count.rows < 0 or not math.isfinite(count.counted_at):
        return None
    return count


def install_mark(session: Session) -> None:
    """Create the mark and, on sqlite, the triggers that keep it (when missing)."""
    if dialect_of(session).deletion_mark == TRIGGERS:
        install_counter(session, MARK_KEY, SQLITE_TRIGGERS)


def deletion_mark(session: Session) -> int | None:
    """The catalog's deletion mark now; None when it has none."""
    kind = dialect_of(session).deletion_mark
    if kind == TRIGGERS:
        value = get_meta(session, MARK_KEY)
        try:
            return None if value is None else int(value)
        except ValueError:
            return None
    if kind == STATISTICS:
        value = session.scalar(text(
            "SELECT n_tup_del FROM pg_stat_user_tables WHERE relid = to_regclass(:t)"),
            {"t": FILES_TABLE})
        return None if value is None else int(value)
    return None


def exact_mark(session: Session, mark: int | None) -> bool:
    """True when the mark changes with every deletion and move (the sqlite triggers)."""
    return mark is not None and dialect_of(session).deletion_mark == TRIGGERS


def rows_between(session: Session, archive_name: str, low: int, high: int) -> int:
    """Rows of the archive with low < id <= high (a primary-key range)."""
    if high <= low:
        return 0
    # archive_name || '': scan the ids by primary key, not the archive's index.
    return int(session.scalar(select(func.count()).select_from(F).where(
        F.archive_name.concat("") == archive_name, F.id > low, F.id <= high)) or 0)


def count_whole(session: Session, archive_name: str, top: int) -> int:
    """Rows of the archive with an id up to top (a scan of the archive's index)."""
    return int(session.scalar(select(func.count()).select_from(F).where(
        F.archive_name == archive_name, F.id <= top)) or 0)


def stored(session: Session, archive_name: str) -> Count | None:
    """The count kept in the catalog for the archive."""
    return parse(get_meta(session, COUNT_PREFIX + archive_name))


def store(session: Session, archive_name: str, count: Count) -> None:
    """Keep a count in the catalog unless one covering more ids is there."""
    there = stored(session, archive_name)
    if there is None or there.top <= count.top or there.mark != count.mark:
        set_meta(session, COUNT_PREFIX + archive_name, count.as_text())


def usable(session: Session, count: Count | None, top: int, mark: int | None,
           now: float) -> bool:
    """True when rows above ``count.top`` are all a new count must add."""
    if count is None or count.top > top or count.mark != mark:
        return False
    return exact_mark(session, mark) or 0 <= now - count.counted_at <= FULL_COUNT_INTERVAL
