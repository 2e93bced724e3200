"""Finding the rows whose destination meets another's, without reading the archive.

Rows spelled canonically (everything registered through suprsync) are found
through the files table's (archive_name, remote_path) index: equal paths and
parents by ``IN``, children by a bytewise range ``[P/, P0)``. The few rows other
programs wrote with odd spellings (``a//b``) get their normalized path in the
paths table, filled by scanning only the file ids added since the last scan.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import delete, func, or_, select, text
from sqlalchemy.orm import Session

from ..collisions import Partner
from ..paths import ODD_END, ODD_INSIDE, ODD_START, ODD_WHOLE, normalize_remote_path, parents
from .dialects import dialect_of
from .idmarks import id_mark, ids_reused
from .inserts import insert_missing
from .meta import get_meta, set_meta
from .quarantine import is_valid_text
from .schema import PathKey, SupRsyncFile

F = SupRsyncFile

#: Meta key: highest file id already scanned for oddly spelled remote paths.
SCANNED_KEY = "path_keys_scanned_up_to"
#: Meta key: the count of idmarks when SCANNED_KEY's id was read.
MARK_KEY = "path_keys_scanned_mark"
#: Meta key: lowest file id scanned so far (older ids are scanned backwards).
BACKFILLED_KEY = "path_keys_scanned_from"
#: Older file ids scanned per call.
BACKFILL = 50_000
#: Values per IN list.
CHUNK = 500

def not_canonical_sql():  # type: ignore[no-untyped-def]
    """SQL condition for the remote paths is_canonical refuses (NUL aside: never valid)."""
    p = F.remote_path
    return or_(p.in_(ODD_WHOLE), *(p.startswith(x) for x in ODD_START),
               *(p.endswith(x) for x in ODD_END), *(p.contains(x) for x in ODD_INSIDE))


def _record(session: Session, low: int, high: int) -> int:
    """Record the oddly spelled rows with low <= id <= high; return how many."""
    rows = session.execute(select(F.id, F.archive_name, F.remote_path).where(
        F.id >= low, F.id <= high, not_canonical_sql())).all()
    found: dict[int, tuple[str, str]] = {}
    for file_id, archive, remote in rows:
        if not is_valid_text(archive):
            continue  # in no archive an agent can serve (nor a record can name)
        try:
            found[file_id] = (archive, normalize_remote_path(remote))
        except (ValueError, TypeError):
            continue  # never sent: nothing can meet it
    # A record of an id in the range that no longer holds that path (its row deleted,
    # the id given to a new row, or the path rewritten) is replaced or dropped.
    kept = {i: (a, p) for i, a, p in session.execute(
        select(PathKey.file_id, PathKey.archive_name, PathKey.path)
        .where(PathKey.file_id >= low, PathKey.file_id <= high))}
    stale = [i for i, value in kept.items() if found.get(i) != value]
    for chunk in _chunks(stale):
        session.execute(delete(PathKey).where(PathKey.file_id.in_(chunk)))
    insert_missing(session, PathKey.__table__,
                   [{"file_id": i, "archive_name": a, "path": p}
                    for i, (a, p) in found.items() if kept.get(i) != (a, p)])
    return len(found)


def scan_path_keys(session: Session) -> int:
    """Record the oddly spelled rows added since the last scan, and some older ones.

    New ids are scanned at once. Ids below the first scan of a catalog are scanned
    backwards, BACKFILL ids per call, so that no call reads a whole large catalog;
    the progress is kept in the catalog, so this happens once per catalog.
    """
    top = int(session.scalar(select(func.max(F.id))) or 0)
    high = get_meta(session, SCANNED_KEY)
    low = get_meta(session, BACKFILLED_KEY)
    done, first = (int(high), int(low or 0)) if high is not None else (top, top + 1)
    found = 0
    if high is not None and ids_reused(session, done, get_meta(session, MARK_KEY), top):
        # The newest rows were deleted (the table perhaps emptied), and sqlite may have
        # given their ids to new rows: look through every id again, from the top down.
        done, first = top, top + 1
        set_meta(session, SCANNED_KEY, str(top))
        set_meta(session, MARK_KEY, id_mark(session))
    elif top > done or high is None:
        # From done itself: sqlite may give a new row the id of a deleted highest one.
        found += _record(session, done if high is not None else top + 1, top)
        set_meta(session, SCANNED_KEY, str(top))
        set_meta(session, MARK_KEY, id_mark(session))
    if first > 1:
        start = max(1, first - BACKFILL)
        found += _record(session, start, first - 1)
        set_meta(session, BACKFILLED_KEY, str(start))
    elif low is None:
        set_meta(session, BACKFILLED_KEY, str(first))
    return found


_COLUMNS = (F.id, F.remote_path, F.local_md5sum, F.remote_md5sum, F.ignore, F.removed,
            F.failed_copy_attempts)


def as_partner(row: Any, key: str, max_copy_attempts: int | None) -> Partner:
    verified = row.remote_md5sum is not None and row.remote_md5sum == row.local_md5sum
    attempts = row.failed_copy_attempts or 0
    live = (not row.ignore and row.removed is None
            and (max_copy_attempts is None or attempts < max_copy_attempts))
    return Partner(row.id, key, row.local_md5sum, verified, live)


def _key_of(remote_path: Any) -> str | None:
    try:
        return normalize_remote_path(remote_path)
    except (ValueError, TypeError):
        return None


def _chunks(values: Sequence[Any]) -> Iterable[list[Any]]:
    for start in range(0, len(values), CHUNK):
        yield list(values[start:start + CHUNK])


def _children_sql(arrays: bool, joined: str, column: str, extra: str = "",
                  then: str = "") -> Any:
    """Rows whose ``column`` (alias.name) lies in [key/, key0) for one of the keys.

    The keys come as a JSON array (sqlite) or a text array (PostgreSQL); each is
    one range on the (archive_name, path) index.
    """
    cols = ", ".join(f"f.{c.key}" for c in _COLUMNS)
    archive = column.split(".")[0] + ".archive_name"
    if arrays:
        return text(
            f"SELECT {cols}{extra} FROM unnest(CAST(:keys AS text[])) AS j(value) "
            f"JOIN {joined} ON {archive} = :archive "
            f"AND {column} ~>=~ (j.value || '/') AND {column} ~<~ (j.value || '0'){then}")
    # CROSS JOIN: sqlite keeps the keys as the outer loop, one index range per key.
    return text(
        f"SELECT {cols}{extra} FROM json_each(:keys) AS j "
        f"CROSS JOIN {joined} ON {archive} = :archive "
        f"AND {column} >= j.value || '/' AND {column} < j.value || '0'{then}")


def _encodable(key: str) -> bool:
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def partners(session: Session, archive_name: str, keys: Iterable[str],
             max_copy_attempts: int | None = None,
             known: set[int] | frozenset[int] = frozenset()) -> list[Partner]:
    """Every row of the archive whose normalized remote path meets one of ``keys``.

    Each row appears once; the caller matches them to its candidates. Rows whose
    id is in ``known`` (the caller has them already) are left out.
    """
    wanted = sorted({k for k in keys if _encodable(k)})
    if not wanted:
        return []
    probes = sorted({p for k in wanted for p in (k, *parents(k))})
    found: dict[int, Partner] = {}

    def take(rows: Iterable[Any], key_column: str | None = None) -> None:
        for row in rows:
            if row.id in found or row.id in known:
                continue
            key = getattr(row, key_column) if key_column else _key_of(row.remote_path)
            if key is not None:
                found[row.id] = as_partner(row, key, max_copy_attempts)

    for chunk in _chunks(probes):
        take(session.execute(select(*_COLUMNS).where(
            F.archive_name == archive_name, F.remote_path.in_(chunk))))
        take(session.execute(select(*_COLUMNS, PathKey.path.label("norm"))
                             .join(PathKey, PathKey.file_id == F.id)
                             .where(PathKey.archive_name == archive_name,
                                    PathKey.path.in_(chunk))), "norm")
    arrays = dialect_of(session).array_parameters
    files_children = _children_sql(arrays, f"{F.__tablename__} AS f", "f.remote_path")
    keyed_children = _children_sql(
        arrays, f"{PathKey.__tablename__} AS t", "t.path", ", t.path AS norm",
        f" JOIN {F.__tablename__} AS f ON f.id = t.file_id")
    for chunk in _chunks(wanted):
        keys_param: Any = chunk if arrays else json.dumps(chunk)
        params = {"keys": keys_param, "archive": archive_name}
        take(session.execute(files_children, params))
        take(session.execute(keyed_children, params), "norm")
    return list(found.values())
