"""The selection of an archive's unverified rows, through the partial index that holds them."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from .dialects import via_unsynced_index
from .schema import NOT_IGNORED, UNSYNCED, SupRsyncFile

F = SupRsyncFile


def unsynced_rows(archive_name: str, *columns: Any):  # type: ignore[no-untyped-def]
    """SELECT of columns of the archive's non-ignored rows not verified, through the
    partial index of unsynced rows.

    sqlite is told the index; PostgreSQL, which guesses that most rows are unsynced
    (it cannot estimate ``remote_md5sum != local_md5sum``), would read the whole table
    for a count, and takes the index when the rows are wanted in its order.
    """
    return via_unsynced_index(
        select(*columns).where(F.archive_name == archive_name, UNSYNCED, NOT_IGNORED)
        .order_by(F.archive_name, F.timestamp), F)
