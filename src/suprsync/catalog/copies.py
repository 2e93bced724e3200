"""An archive's destinations, and each file's state at every destination but the first.

The first (primary) destination of an archive keeps the original's columns of
the files table, so that socs-era tools keep their meaning. Each further
destination has a row in ``suprsync_destinations_v0`` and one row per file in
``suprsync_copies_v0``: what md5 was seen there, when it was copied, its failed
attempts, whether it is verified, and whether the local file went before it
could be copied there (lost). Rows are given to a destination as files are
registered (:func:`track`), and to a destination added later from the whole
archive, in chunks.

:class:`DestinationCopies` answers, for one such destination, the calls the copy
and verify steps make on the catalog, so that those steps run unchanged.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Boolean,
    and_,
    bindparam,
    delete,
    exists,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.orm import Session

from .dialects import dialect_of
from .quarantine import HEALTHY
from .schema import (
    NOT_IGNORED,
    PENDING_COPY,
    Conflict,
    DestinationClaim,
    DestinationCopy,
    DestinationRecord,
    SupRsyncFile,
)
from .timecode import freeze_registrations, max_file_id

if TYPE_CHECKING:
    from .store import CopyResult, SupRsyncFilesManager

F = SupRsyncFile
DC = DestinationCopy
DR = DestinationRecord
CL = DestinationClaim

#: File ids given copy rows per transaction when a destination catches up.
TRACK_CHUNK = 50_000
#: Ids per IN (...) list.
ID_CHUNK = 500
#: What a destination id may hold.
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class DestinationConflict(ValueError):
    """The destinations given do not fit the ones the catalog records; says why."""


@dataclass(frozen=True)
class Wanted:
    """A destination an agent was given: its id, URL, and whether the id was named."""

    name: str
    url: str
    explicit: bool = False


@dataclass(frozen=True)
class Registered:
    """A destination recorded in the catalog."""

    key: int
    name: str
    url: str
    primary: bool


def default_destination_id(url: str) -> str:
    """A short id for a destination named by URL alone: its host (or ``local``) and a
    hash of the URL."""
    host = "local"
    if "://" in url:
        authority = url.split("://", 1)[1].split("/", 1)[0]
        host = authority.rsplit("@", 1)[-1].split(":", 1)[0].strip("[]") or "local"
    host = re.sub(r"[^A-Za-z0-9.-]", "-", host)[:40].strip(".-") or "local"
    return f"{host}-{hashlib.sha1(url.encode()).hexdigest()[:6]}"


def check_destination_id(name: str) -> str:
    """``name`` when it is a valid destination id; ValueError otherwise."""
    if not ID_PATTERN.match(name):
        raise ValueError(f"destination id {name!r} must be 1 to 64 letters, digits, '.', '_' "
                         f"or '-', starting with a letter or digit")
    return name


def registered(session: Session, archive_name: str) -> list[Registered]:
    """Every destination recorded for the archive, the primary first."""
    rows = session.execute(select(DR.id, DR.name, DR.url, DR.is_primary)
                           .where(DR.archive_name == archive_name)
                           .order_by(DR.is_primary.desc(), DR.id))
    return [Registered(int(k), n, u, bool(p)) for k, n, u, p in rows]


def register(session: Session, archive_name: str, wanted: Sequence[Wanted],
             now: float) -> list[Registered]:
    """Record the agent's destinations for the archive; each one's record, in order.

    The first destination ever recorded for an archive is its primary. An agent
    given one destination whose id it did not name is the primary's agent (a
    changed URL is the primary's new URL). Otherwise an id names the destination
    whose state it keeps; several unnamed destinations none of which is the primary
    are refused (which of them is the first would be a guess).
    """
    if not wanted:
        raise DestinationConflict("no destination given")
    names = [w.name for w in wanted]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise DestinationConflict(f"destination ids given twice: {', '.join(twice)}")
    # The first statement writes, so that sqlite takes its write lock up front.
    session.execute(update(DR).where(DR.archive_name == archive_name).values(url=DR.url))
    dialect_of(session).lock_named(session, f"destinations {archive_name}")
    known = {r.name: r for r in registered(session, archive_name)}
    primary = next((r for r in known.values() if r.primary), None)
    out: list[Registered] = []
    if primary is not None and primary.name not in names:
        if len(wanted) == 1 and not wanted[0].explicit:
            # The one destination of a site that named none: the primary at a new URL.
            wanted = [Wanted(primary.name, wanted[0].url, False)]
        elif not any(w.explicit for w in wanted):
            raise DestinationConflict(
                f"archive {archive_name!r} ships first to destination {primary.name!r} "
                f"({primary.url}); name the destinations with --destination-id "
                f"{primary.name}=URL and NAME=URL")
    for i, w in enumerate(wanted):
        rec = known.get(w.name)
        if rec is None:
            is_primary = primary is None and i == 0
            key = session.execute(insert(DR).values(
                archive_name=archive_name, name=w.name, url=w.url, is_primary=is_primary,
                added=now, tracked_up_to=0).returning(DR.id)).scalar_one()
            rec = Registered(int(key), w.name, w.url, is_primary)
            if is_primary:
                primary = rec
                # The primary's state is the files table itself: nothing to track.
                top = max_file_id(session)
                session.execute(update(DR).where(DR.id == rec.key).values(tracked_up_to=top))
        elif rec.url != w.url:
            session.execute(update(DR).where(DR.id == rec.key).values(url=w.url))
            rec = Registered(rec.key, rec.name, w.url, rec.primary)
        out.append(rec)
    return out


def track(session: Session, dest: int, archive_name: str,
          chunk: int = TRACK_CHUNK) -> tuple[int, bool]:
    """Give the destination a copy row for the archive's next files; (rows added, done).

    A file already removed locally gets a row marked lost: it can no longer be
    copied there. On PostgreSQL registrations in flight are waited for, so that no
    row committed late below the bound is skipped.
    """
    low = session.scalar(select(DR.tracked_up_to).where(DR.id == dest))
    if low is None:
        return 0, True
    if not dialect_of(session).ids_commit_in_order:
        top = max_file_id(session)
        if top <= low:
            return 0, True
        freeze_registrations(session)
    top = max_file_id(session)
    high = min(top, int(low) + chunk)
    if high <= low:
        return 0, True
    added = session.execute(insert(DC).from_select(
        ["dest", "file_id", "failed_copy_attempts", "verified", "lost"],
        select(literal(dest), F.id, literal(0), literal(False, Boolean),
               F.removed.is_not(None))
        .where(F.archive_name == archive_name, F.id > low, F.id <= high,
               ~exists().where(DC.dest == dest, DC.file_id == F.id)))).rowcount
    session.execute(update(DR).where(DR.id == dest).values(tracked_up_to=high))
    return int(added or 0), high >= top


def mark_lost(session: Session, dest: int) -> int:
    """Mark lost the pending copies whose local file is gone; how many."""
    gone = select(F.id).where(F.id == DC.file_id, F.removed.is_not(None))
    return int(session.execute(update(DC).where(DC.dest == dest, PENDING_COPY,
                                                exists(gone))
                               .values(lost=True)).rowcount or 0)


def forget_verifications(session: Session, file_ids: Iterable[int]) -> None:
    """Copies of these files whose md5 no longer matches the local one go back to pending."""
    ids = list(file_ids)
    for start in range(0, len(ids), ID_CHUNK):
        part = ids[start:start + ID_CHUNK]
        stale = select(F.id).where(F.id == DC.file_id, F.local_md5sum != DC.remote_md5sum)
        session.execute(update(DC).where(DC.file_id.in_(part), DC.verified.is_(True),
                                         exists(stale)).values(verified=False))


def verified_at(session: Session, file_ids: Sequence[int],
                dests: Sequence[int]) -> dict[int, set[int]]:
    """file id -> the destinations (of ``dests``) where its copy is verified with the
    local file's md5."""
    out: dict[int, set[int]] = defaultdict(set)
    if not dests:
        return out
    for start in range(0, len(file_ids), ID_CHUNK):
        part = list(file_ids[start:start + ID_CHUNK])
        rows = session.execute(
            select(DC.file_id, DC.dest).join(F, F.id == DC.file_id)
            .where(DC.file_id.in_(part), DC.dest.in_(list(dests)), DC.verified.is_(True),
                   DC.remote_md5sum == F.local_md5sum))
        for file_id, dest in rows:
            out[int(file_id)].add(int(dest))
    return out


@dataclass(frozen=True)
class DestinationCounts:
    """Files of an archive at one further destination, by state."""

    verified: int
    pending: int
    given_up: int
    lost: int

    def as_dict(self) -> dict[str, int]:
        """The counts as a dict (for --json and the session data)."""
        return {"verified": self.verified, "pending": self.pending,
                "given_up": self.given_up, "lost": self.lost}


def counts(session: Session, dest: int, max_copy_attempts: int | None) -> DestinationCounts:
    """How many files are verified, pending, at the attempt limit and lost at ``dest``."""
    verified = session.scalar(select(func.count()).select_from(DC).where(
        DC.dest == dest, DC.verified.is_(True))) or 0
    lost = session.scalar(select(func.count()).select_from(DC).where(
        DC.dest == dest, DC.verified.is_(False), DC.lost.is_(True))) or 0
    pending_q = select(func.count()).select_from(DC).where(DC.dest == dest, PENDING_COPY)
    pending = session.scalar(pending_q) or 0
    given_up = 0
    if max_copy_attempts is not None:
        given_up = session.scalar(pending_q.where(
            DC.failed_copy_attempts >= max_copy_attempts)) or 0
    return DestinationCounts(int(verified), int(pending) - int(given_up), int(given_up),
                             int(lost))


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

    def track(self, archive_name: str) -> int:
        """Give this destination copy rows for every file registered since the last call
        (in transactions of TRACK_CHUNK ids); how many rows were added."""
        total = 0
        while True:
            added, done = self.manager.write(
                lambda s: track(s, self.key, archive_name), what="track new files")
            total += added
            if done:
                break
        self.manager.write(lambda s: mark_lost(s, self.key), what="mark lost copies")
        return total


def summary(session: Session, archive_name: str,
            max_copy_attempts: int | None) -> list[dict[str, Any]]:
    """Every destination of the archive with its files by state (the primary's are the
    archive's own counts, so only its id and URL are given); empty with one or none."""
    out: list[dict[str, Any]] = []
    known = registered(session, archive_name)
    if len(known) <= 1:
        return out
    for rec in known:
        entry: dict[str, Any] = {"id": rec.name, "url": rec.url, "primary": rec.primary}
        if not rec.primary:
            entry.update(counts(session, rec.key, max_copy_attempts).as_dict())
        out.append(entry)
    return out


def summary_lines(archive_name: str, destinations: list[dict[str, Any]]) -> list[str]:
    """One line per destination of an archive (none for a single destination)."""
    lines = []
    for d in destinations:
        if d["primary"]:
            lines.append(f"{archive_name}: destination {d['id']} ({d['url']}): primary, "
                         "counted above")
            continue
        lines.append(f"{archive_name}: destination {d['id']} ({d['url']}): {d['verified']} "
                     f"verified, {d['pending']} pending, {d['given_up']} at the attempt limit, "
                     f"{d['lost']} can no longer be copied (deleted locally first)")
    return lines
