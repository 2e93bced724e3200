"""The rows of one timecode dir, read through the (archive, remote_path) index."""

from __future__ import annotations

from sqlalchemy import LargeBinary, func, literal, literal_column, or_
from sqlalchemy.orm import Session

from .dialects import dialect_of
from .schema import SupRsyncFile

F = SupRsyncFile


def in_dir(session: Session, archive_name: str, timecode: int):  # type: ignore[no-untyped-def]
    """SQL condition: a row of this archive whose remote path lies under this timecode dir.

    Both forms read only the dir's entries of the (archive, remote_path) index. On
    PostgreSQL (a text_pattern_ops index) a prefix LIKE. On sqlite, whose LIKE is
    no index range, the bytewise range ``[tc/, tc0)``, or a remote path stored as a
    BLOB (quarantined; BLOBs sort after all text) whose first bytes are the prefix
    (sqlite's LIKE matches no BLOB).
    """
    prefix = f"{int(timecode)}/"
    if dialect_of(session).prefix_like_uses_index:
        return (F.archive_name == archive_name) & F.remote_path.like(prefix + "%")
    # archive_name inside each branch: sqlite then searches the index once per branch.
    return or_((F.archive_name == archive_name) & (F.remote_path >= prefix)
               & (F.remote_path < f"{int(timecode)}0"),
               (F.archive_name == archive_name) & (F.remote_path >= literal_column("x''"))
               & (func.substr(F.remote_path, 1, len(prefix))
                  == literal(prefix.encode(), LargeBinary)))
