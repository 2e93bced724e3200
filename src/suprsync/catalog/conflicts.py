"""Conflicts (files that must not be sent as they are) and pinned md5s, in side tables."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, inspect, select
from sqlalchemy.orm import Session

from .inserts import insert_missing
from .schema import Conflict, PinnedFile, SupRsyncFile

F = SupRsyncFile
CHUNK = 500

#: A row whose transfer would replace or shadow another row's verified copy.
COLLISION = "collision"
#: A row whose local file changed after its copy was verified.
CHANGED = "changed"


@dataclass(frozen=True)
class NewConflict:
    """A conflict to record."""

    file_id: int
    kind: str
    other_id: int | None
    detail: str


def _in_chunks(ids: Sequence[int]) -> Iterable[list[int]]:
    for start in range(0, len(ids), CHUNK):
        yield list(ids[start:start + CHUNK])


def record_conflicts(session: Session, archive_name: str, conflicts: Sequence[NewConflict],
                     now: float) -> list[NewConflict]:
    """Record conflicts not recorded yet; return the new ones."""
    if not conflicts:
        return []
    known = conflicted_ids(session, [c.file_id for c in conflicts])
    new = []
    for c in conflicts:
        if c.file_id not in known:
            known.add(c.file_id)
            new.append(c)
    if new:
        insert_missing(session, Conflict.__table__, [
            {"file_id": c.file_id, "archive_name": archive_name, "kind": c.kind,
             "other_id": c.other_id, "detail": c.detail, "since": now} for c in new])
    return new


def conflicted_ids(session: Session, file_ids: Sequence[int]) -> set[int]:
    """The ids among file_ids that have a recorded conflict."""
    found: set[int] = set()
    for chunk in _in_chunks(list(file_ids)):
        found.update(session.scalars(select(Conflict.file_id).where(
            Conflict.file_id.in_(chunk))))
    return found


def conflict_count(session: Session, archive_name: str) -> int:
    """Recorded conflicts of an archive."""
    return int(session.scalar(select(func.count()).select_from(Conflict).where(
        Conflict.archive_name == archive_name)) or 0)


def list_conflicts(session: Session, archive_name: str | None = None,
                   limit: int | None = None) -> list[dict[str, Any]]:
    """Recorded conflicts with both rows' paths, oldest first (none in a catalog that
    suprsync never opened for writing: it has no conflicts table)."""
    if not inspect(session.get_bind()).has_table(Conflict.__tablename__):
        return []
    query = (select(Conflict, F.local_path, F.remote_path)
             .join(F, F.id == Conflict.file_id, isouter=True)
             .order_by(Conflict.since, Conflict.file_id))
    if archive_name is not None:
        query = query.where(Conflict.archive_name == archive_name)
    if limit is not None:
        query = query.limit(limit)
    out = []
    for conflict, local_path, remote_path in session.execute(query):
        out.append({"id": conflict.file_id, "archive": conflict.archive_name,
                    "kind": conflict.kind, "other_id": conflict.other_id,
                    "local_path": local_path, "remote_path": remote_path,
                    "detail": conflict.detail, "since": conflict.since})
    return out


def clear_conflicts(session: Session, file_ids: Sequence[int]) -> int:
    """Forget the conflicts of these files; return how many there were."""
    cleared = 0
    for chunk in _in_chunks(list(file_ids)):
        cleared += int(session.execute(delete(Conflict).where(
            Conflict.file_id.in_(chunk))).rowcount or 0)
    return cleared


def pin(session: Session, pins: Sequence[tuple[int, str]]) -> None:
    """Pin the md5 of files whose copy was verified once (kept if already pinned)."""
    if not pins:
        return
    known = pinned_ids(session, [i for i, _ in pins])
    new = [{"file_id": i, "md5": m} for i, m in dict(pins).items() if i not in known]
    insert_missing(session, PinnedFile.__table__, new)


def unpin(session: Session, file_ids: Sequence[int]) -> None:
    """Let these files be re-hashed again (an operator accepted their new content)."""
    for chunk in _in_chunks(list(file_ids)):
        session.execute(delete(PinnedFile).where(PinnedFile.file_id.in_(chunk)))


def pinned_ids(session: Session, file_ids: Sequence[int]) -> set[int]:
    """The ids among file_ids whose md5 is pinned."""
    found: set[int] = set()
    for chunk in _in_chunks(list(file_ids)):
        found.update(session.scalars(select(PinnedFile.file_id).where(
            PinnedFile.file_id.in_(chunk))))
    return found
