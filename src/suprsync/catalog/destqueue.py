"""The catalog as the copy and verify steps see it for one further destination.

Files, conflicts and local dirs are shared with the primary; copy state and
claims are the destination's own (see :mod:`.copies`), so the copy and verify
steps run unchanged for any destination.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, bindparam, delete, exists, func, select, update
from sqlalchemy.orm import Session

from .copies import Registered, mark_lost, repair_values, track
from .dialects import dialect_of
from .quarantine import HEALTHY
from .schema import (
    NOT_IGNORED,
    PENDING_COPY,
    Conflict,
    DestinationClaim,
    DestinationCopy,
    SupRsyncFile,
)

if TYPE_CHECKING:
    from .store import CopyResult, SupRsyncFilesManager

log = logging.getLogger(__name__)

F = SupRsyncFile
DC = DestinationCopy
CL = DestinationClaim


#: The files table's columns, with the state of a further destination in place of
#: the primary's.
_OWN = ("remote_md5sum", "copied", "failed_copy_attempts")


def _row_columns() -> list[Any]:
    return [getattr(DC, c.name).label(c.name) if c.name in _OWN else c
            for c in F.__table__.columns]


class DestinationCopies:
    """The catalog as the copy and verify steps see it, for one further destination.

    Files, conflicts and local dirs are shared with the primary; copy state and
    claims are this destination's own.
    """

    def __init__(self, manager: SupRsyncFilesManager, dest: Registered) -> None:
        self.manager = manager
        self.dest = dest
        self.key = dest.key

    # What the steps read and write as they do at the primary.
    def read(self, fn: Any, what: str = "catalog read") -> Any:
        """See :meth:`SupRsyncFilesManager.read`."""
        return self.manager.read(fn, what=what)

    def write(self, fn: Any, what: str = "catalog write") -> Any:
        """See :meth:`SupRsyncFilesManager.write`."""
        return self.manager.write(fn, what=what)

    def max_file_id(self) -> int:
        """Highest file id of the catalog."""
        return self.manager.max_file_id()

    def claim_copyable(self, archive_name: str, agent_id: str, lease: float,
                       max_copy_attempts: int | None = None, num_files: int | None = None,
                       after: tuple[float, int] | None = None,
                       up_to: int | None = None) -> list[Any]:
        """Lease files still to be copied here, in id order (``after``: after its id)."""
        key = self.key

        def claim(session: Session) -> list[Any]:
            now = self.manager.clock()
            session.execute(delete(CL).where(CL.dest == key, (CL.expires < now)
                                             | (CL.agent_id == agent_id)))
            query = (select(*_row_columns()).select_from(DC).join(F, F.id == DC.file_id)
                     .where(DC.dest == key, PENDING_COPY, F.archive_name == archive_name,
                            F.removed.is_(None), NOT_IGNORED, HEALTHY,
                            ~exists().where(CL.dest == key, CL.file_id == DC.file_id),
                            ~exists().where(Conflict.file_id == DC.file_id)))
            if max_copy_attempts is not None:
                query = query.where(DC.failed_copy_attempts < max_copy_attempts)
            if after is not None:
                query = query.where(DC.file_id > after[1])
            if up_to is not None:
                query = query.where(DC.file_id <= up_to)
            query = query.order_by(DC.file_id)
            if num_files is not None:
                query = query.limit(num_files)
            rows = list(session.execute(dialect_of(session).claim(query, of=DC)))
            if not rows:
                return rows
            leases = [{"dest": key, "file_id": r.id, "agent_id": agent_id,
                       "expires": now + lease} for r in rows]
            won = dialect_of(session).insert_claims(session, CL.__table__, leases,
                                                    key=("dest", "file_id"))
            return [r for r in rows if r.id in won]

        return self.manager.write(claim, what="claim files")

    def renew_claims(self, agent_id: str, lease: float) -> None:
        """Extend agent_id's leases at this destination."""
        self.manager.write(lambda s: s.execute(
            update(CL).where(CL.dest == self.key, CL.agent_id == agent_id)
            .values(expires=self.manager.clock() + lease)), what="renew claims")

    def release_claims(self, agent_id: str, file_ids: Iterable[int] | None = None) -> None:
        """Drop agent_id's leases at this destination (all, or on these files)."""
        ids = None if file_ids is None else list(file_ids)
        if ids is not None and not ids:
            return

        def release(session: Session) -> None:
            stmt = delete(CL).where(CL.dest == self.key, CL.agent_id == agent_id)
            if ids is not None:
                stmt = stmt.where(CL.file_id.in_(ids))
            session.execute(stmt)

        self.manager.write(release, what="release claims")

    def claim_holders(self) -> list[str]:
        """Ids of the agents holding a lease at this destination."""
        return self.manager.read(lambda s: list(s.scalars(
            select(CL.agent_id).where(CL.dest == self.key).distinct())), what="claim holders")

    def record_results(self, results: Sequence[CopyResult], agent_id: str | None = None) -> None:
        """Store what this destination holds; a failed file gets one more failed attempt.

        A further destination never takes changed local content for the file's: a
        copy verified only against a re-hashed local file counts as failed (the
        primary's copy step records the new content, and this one follows).
        """
        if not results:
            return
        key = self.key

        def apply(session: Session) -> None:
            ids = [r.file_id for r in results]
            if agent_id is not None:
                session.execute(delete(CL).where(CL.dest == key, CL.agent_id == agent_id,
                                                 CL.file_id.in_(ids)))
            good, bad = [], []
            for r in results:
                ok = r.ok and r.local_md5sum is None
                params = {"fid": r.file_id, "md5": r.remote_md5sum, "when": r.copied}
                (good if ok else bad).append(params)
            table = DC.__table__
            where = and_(table.c.dest == key, table.c.file_id == bindparam("fid"))
            if good:
                session.execute(table.update().where(where).values(
                    remote_md5sum=bindparam("md5"),
                    copied=func.coalesce(bindparam("when"), table.c.copied),
                    verified=True), good)
            if bad:
                session.execute(table.update().where(where).values(
                    remote_md5sum=bindparam("md5"),
                    copied=func.coalesce(bindparam("when"), table.c.copied),
                    failed_copy_attempts=table.c.failed_copy_attempts + 1), bad)

        self.manager.write(apply, what="record copy results")

    def count_failed_attempt(self, file_ids: Iterable[int]) -> None:
        """Add one failed attempt here to each of these files."""
        ids = list(file_ids)
        if ids:
            self.manager.write(lambda s: s.execute(
                update(DC).where(DC.dest == self.key, DC.file_id.in_(ids))
                .values(failed_copy_attempts=DC.failed_copy_attempts + 1)),
                what="count failed attempt")

    def mark_unsendable(self, file_ids: Iterable[int], max_copy_attempts: int) -> None:
        """Put files that can never be sent at the attempt limit here."""
        ids = list(file_ids)
        if ids:
            self.manager.write(lambda s: s.execute(
                update(DC).where(DC.dest == self.key, DC.file_id.in_(ids))
                .values(failed_copy_attempts=max_copy_attempts)), what="mark unsendable")

    def requeue(self, file_id: int, observed_md5: str | None = None,
                local_md5: str | None = None, reset_attempts: bool = False) -> None:
        """Forget this destination's verification of a file so that it is sent again."""
        values: dict[str, Any] = {"verified": False, "remote_md5sum": observed_md5}
        if reset_attempts:
            values["failed_copy_attempts"] = 0
        self.manager.write(lambda s: s.execute(
            update(DC).where(DC.dest == self.key, DC.file_id == file_id).values(**values)),
            what="requeue")

    def repair(self) -> None:
        """Mend copy rows here whose values suprsync never writes (see
        :func:`~suprsync.catalog.copies.repair_values`); a warning says how many."""
        changed = self.write(lambda s: repair_values(s, self.key),
                             what="mend copy rows")
        if changed:
            log.warning("destination %s: %d copy row(s) held values suprsync never writes; "
                        "those files are checked and sent there again", self.dest.name,
                        changed)

    def track(self, archive_name: str) -> int:
        """Give this destination copy rows for every file registered since the last call
        (in transactions of :data:`.copies.TRACK_CHUNK` ids); how many rows were added."""
        total = 0
        while True:
            added, done = self.manager.write(
                lambda s: track(s, self.key, archive_name), what="track new files")
            total += added
            if done:
                break
        self.manager.write(lambda s: mark_lost(s, self.key), what="mark lost copies")
        return total
