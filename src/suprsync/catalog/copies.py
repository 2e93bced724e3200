"""An archive's destinations, and each file's state at every destination but the first.

The first (primary) destination of an archive keeps the original's columns of
the files table, so that socs-era tools keep their meaning. Each further
destination has a row in ``suprsync_destinations_v0`` and one row per file in
``suprsync_copies_v0``: what md5 was seen there, when it was copied, its failed
attempts, whether it is verified, and whether the local file went before it
could be copied there (lost). Rows are given to a destination as files are
registered (:func:`track`), and to a destination added later from the whole
archive, in chunks.

:class:`.destqueue.DestinationCopies` gives the copy and verify steps one such
destination's view of the catalog.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Boolean,
    Integer,
    and_,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    type_coerce,
    update,
)
from sqlalchemy.orm import Session

from .dialects import dialect_of
from .dirrows import in_dir
from .idmarks import id_mark, ids_reused
from .lateness import SUPRSYNC_SUBDIR
from .meta import get_meta, set_meta
from .schema import (
    NOT_IGNORED,
    PENDING_COPY,
    SYNCED,
    DestinationClaim,
    DestinationCopy,
    DestinationRecord,
    SupRsyncFile,
)
from .timecode import max_file_id, settled_top

log = logging.getLogger(__name__)

F = SupRsyncFile
DC = DestinationCopy
DR = DestinationRecord
CL = DestinationClaim

#: File ids given copy rows per transaction when a destination catches up.
TRACK_CHUNK = 50_000
#: Meta key prefix (then the destination's key): the count of idmarks at its tracked_up_to.
TRACKED_MARK_PREFIX = "tracked_mark:"
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
    """Every destination recorded for the archive, the primary first.

    Only one record is the primary: of several marked so (a hand-edited catalog),
    the oldest. ``register`` repairs the marks.
    """
    rows = _records(session, archive_name)
    first = next((k for k, _, _, p in rows if _marked(p)), None)
    out = [Registered(k, str(n), str(u), k == first) for k, n, u, _ in rows]
    return sorted(out, key=lambda r: not r.primary)


def _records(session: Session, archive_name: str) -> list[tuple[int, Any, Any, Any]]:
    """(id, name, url, is_primary as stored) of the archive's records, oldest first."""
    rows = session.execute(select(DR.id, DR.name, DR.url, type_coerce(DR.is_primary, Integer))
                           .where(DR.archive_name == archive_name).order_by(DR.id))
    return [(int(k), n, u, p) for k, n, u, p in rows]


def _marked(value: Any) -> bool:
    """A stored is_primary that says yes: 1 or true, nothing else another program wrote."""
    return value is True or (type(value) is int and value == 1)


def _repair_primary(session: Session, archive_name: str) -> None:
    """Leave exactly one record of the archive marked primary, when it has any: the
    oldest of those marked, or else the oldest record (the first one ever made is
    the primary). Each change is a warning."""
    rows = _records(session, archive_name)
    if not rows:
        return
    marked = [r for r in rows if _marked(r[3])]
    keep = marked[0] if marked else rows[0]
    for key, name, _, value in rows:
        if key == keep[0]:
            if not _marked(value):
                log.warning("no destination of archive %r is marked primary in the catalog "
                            "(%r): %s, the first recorded, is the primary again",
                            archive_name, value, name)
                session.execute(update(DR).where(DR.id == key).values(is_primary=True))
        elif value is not False and not (type(value) is int and value == 0):
            log.warning("destination %s of archive %r was marked primary (%r) besides %s: it "
                        "is a further destination", name, archive_name, value, keep[1])
            session.execute(update(DR).where(DR.id == key).values(is_primary=False))


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
    _repair_primary(session, archive_name)
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
            log.warning("destination %s of archive %r moves from %s to %s; agents that ship "
                        "the archive to different places must each name theirs with "
                        "--destination-id", rec.name, archive_name, rec.url, w.url)
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
    record = session.execute(select(DR.name, type_coerce(DR.tracked_up_to, Integer))
                             .where(DR.id == dest)).first()
    if record is None:
        return 0, True
    top = max_file_id(session)
    low = _file_id_bound(record[1])
    mark_key = TRACKED_MARK_PREFIX + str(dest)
    if low is None or low > top:
        # Not a bound this agent wrote (or the catalog's last rows are gone): start
        # again from the first file; rows that have a copy row keep it.
        log.warning("destination %s of archive %r is recorded as tracked up to file id %r, "
                    "which the catalog (last id %d) does not have: its files are looked "
                    "through again from the first", record[0], archive_name, record[1], top)
        low = 0
    elif low and ids_reused(session, low, get_meta(session, mark_key), top):
        log.warning("the newest rows of the catalog were deleted since destination %s of "
                    "archive %r was tracked up to file id %d (sqlite gives their ids to new "
                    "rows): its files are looked through again from the first", record[0],
                    archive_name, low)
        low = 0
    if top <= low:
        return 0, True
    if not dialect_of(session).ids_commit_in_order:
        top = settled_top(session)
    high = min(top, low + chunk)
    # Counted from the ids returned: on PostgreSQL the statement's rowcount is -1.
    added = len(session.execute(insert(DC).from_select(
        ["dest", "file_id", "failed_copy_attempts", "verified", "lost"],
        select(literal(dest), F.id, literal(0), literal(False, Boolean),
               F.removed.is_not(None))
        .where(F.archive_name == archive_name, F.id > low, F.id <= high,
               ~exists().where(DC.dest == dest, DC.file_id == F.id)))
        .returning(DC.file_id)).all())
    session.execute(update(DR).where(DR.id == dest).values(tracked_up_to=high))
    set_meta(session, mark_key, id_mark(session))
    return added, high >= top


def repair_values(session: Session, dest: int) -> int:
    """Put the destination's copy rows whose values suprsync never writes back to what
    they can mean (sqlite only: its column types are affinities); how many changed.

    A ``verified`` that is not 0 or 1 becomes not verified (the copy is checked and
    sent again); a ``lost`` that is not 0 or 1 becomes whether the local file is
    gone; attempts that are not a count start again from 0; a remote md5 that is
    not text is forgotten, with its verification.
    """
    if not dialect_of(session).typeof_checks:  # the column types hold
        return 0
    odd = {c: or_(func.typeof(c) != "integer", c.not_in([0, 1]))
           for c in (DC.verified, DC.lost)}
    changed = 0
    for where, values in (
            (odd[DC.verified], {"verified": False}),
            (odd[DC.lost], {"lost": select(F.removed.is_not(None)).where(F.id == DC.file_id)
                            .scalar_subquery()}),
            (or_(func.typeof(DC.failed_copy_attempts) != "integer",
                 DC.failed_copy_attempts < 0), {"failed_copy_attempts": 0}),
            (and_(DC.remote_md5sum.is_not(None), func.typeof(DC.remote_md5sum) != "text"),
             {"remote_md5sum": None, "verified": False})):
        changed += session.execute(update(DC).where(DC.dest == dest, where)
                                   .values(**values)).rowcount or 0
    return changed


def _file_id_bound(value: Any) -> int | None:
    """A stored tracked_up_to as a file id; None when it is not one (text, NaN, < 0)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not value.is_integer():
        return None
    return int(value) if value >= 0 else None


def withhold_where_lost(session: Session, archive_name: str, timecode: int,
                        file_id: int) -> list[str]:
    """Keep a dir's new finalization file (row ``file_id``) from the further destinations
    that lost a file of the dir (finalization files under ``<tc>/suprsync/`` aside, as
    in the dir's summary): its copy there is marked lost at once, so no destination
    is told a day is whole when it is not. Their names."""
    withheld = []
    for rec in registered(session, archive_name):
        if rec.primary:
            continue
        lost_here = select(F.id).where(
            in_dir(session, archive_name, timecode), NOT_IGNORED,
            ~F.remote_path.like(f"{int(timecode)}/{SUPRSYNC_SUBDIR}/%"),
            exists().where(DC.dest == rec.key, DC.file_id == F.id, DC.lost.is_(True),
                           DC.verified.is_(False))).limit(1)
        if session.scalar(lost_here) is None:
            continue
        session.execute(insert(DC).values(dest=rec.key, file_id=file_id,
                                          failed_copy_attempts=0, verified=False, lost=True))
        withheld.append(rec.name)
    return withheld


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


def verified_somewhere(dests: Sequence[int]) -> Any:
    """SQL condition: the file is verified at the primary or at one of ``dests``."""
    if not dests:
        return SYNCED
    there = select(DC.file_id).where(DC.file_id == F.id, DC.dest.in_(list(dests)),
                                     DC.verified.is_(True), DC.remote_md5sum == F.local_md5sum)
    return or_(SYNCED, exists(there))


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
