"""The deletion step: remove local copies whose remote copies are verified and that the
retention policy (:mod:`suprsync.retention`) lets go.

A local file is deleted only when every row that names it (in any archive) is
verified, deletable, free of conflicts and due under its own archive's rules
(other archives' rules are the ones their agents published in the catalog; an
archive that published none keeps the file). Under disk pressure this archive's
rules let verified files go before their delay. Ignored rows and rows already
marked removed do not need the file.

Before a local file is deleted, the destination is asked again for each of
this archive's rows that name it: the remote copy must still exist with the
local file's size and mtime (and, with ``verify_md5``, the recorded md5). When
it does not, the local file is hashed: if it still holds the registered bytes,
the row is queued to be sent again (its md5 pinned, so only those bytes are
accepted); if it changed after its copy was verified, the row becomes a
conflict and both copies are kept.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import exists, or_, select
from sqlalchemy.orm import Session

from .catalog.conflicts import CHANGED, NewConflict, conflicted_ids, record_conflicts
from .catalog.copies import forget_verifications, verified_at, verified_somewhere
from .catalog.dialects import via_verified_present_index
from .catalog.meta import DELETE_RULE_PREFIX, get_meta, publish_policy
from .catalog.quarantine import HEALTHY
from .catalog.schema import DELETABLE, Conflict, SupRsyncFile
from .catalog.store import SupRsyncFilesManager
from .diskspace import DiskWatch
from .emptydirs import EmptyDirs
from .hashing import md5_file
from .paths import check_local_file, normalize_remote_path
from .retention import Candidate, Policy, Space, Verdict, decide, like_pattern, newest_kept
from .screening import check_local_dirs
from .transport.base import Transport, TransportError
from .verdicts import judge_before_delete, judge_copy

log = logging.getLogger(__name__)

F = SupRsyncFile
Clock = Callable[[], float]

#: Rows handled per query (and per remote check) while deleting.
CHUNK = 500
#: Oldest and newest local files whose file systems are measured before deleting (the
#: files the step goes through add theirs).
FS_SAMPLE = 50


@dataclass
class DeleteReport:
    """What one deletion step did."""

    deleted: list[str] = field(default_factory=list)
    already_gone: list[str] = field(default_factory=list)
    kept: list[tuple[str, str]] = field(default_factory=list)
    requeued: list[tuple[str, str]] = field(default_factory=list)
    conflicts: list[tuple[str, str]] = field(default_factory=list)
    error: str | None = None
    timed_out: bool = False
    #: Local files deleted before their rule's delay, to free space.
    for_space: list[str] = field(default_factory=list)
    #: Bytes deleted per rule (its match text).
    bytes_by_rule: dict[str, int] = field(default_factory=dict)
    #: File systems measured at the end (with --min-free, the wanted free bytes).
    space: list[Space] = field(default_factory=list)
    #: Directories removed because the deletions left them empty.
    removed_dirs: list[str] = field(default_factory=list)

    @property
    def short(self) -> list[Space]:
        """File systems still below --min-free after the step."""
        return [s for s in self.space if s.short > 0]


@dataclass(frozen=True)
class CopyTarget:
    """One destination of the archive, as the deletion step counts its copies.

    ``key`` None is the primary (the files table's columns). ``catalog`` None: a
    destination another agent ships to, whose verified copies the catalog vouches
    for. ``transport`` None with a catalog: in doubt now (its last step failed),
    so it is not counted.
    """

    key: int | None
    name: str
    catalog: Any = None
    transport: Transport | None = None


@dataclass(frozen=True)
class CopyRule:
    """How many verified copies a local file needs before it goes, and where they are."""

    min_copies: int
    targets: tuple[CopyTarget, ...]

    @property
    def elsewhere(self) -> tuple[int, ...]:
        """The further destinations whose verified copies can make a file deletable
        without one at the primary (none when every destination is needed)."""
        if self.min_copies >= len(self.targets):
            return ()
        return tuple(t.key for t in self.targets if t.key is not None)


@dataclass
class Plan:
    """The deletion step's decision on each local path of a batch."""

    #: local path -> (this archive's rows to check on the remote, every row to mark removed)
    delete: dict[str, tuple[list[SupRsyncFile], list[int]]] = field(default_factory=dict)
    #: local path -> the verdict of its row in this archive
    verdicts: dict[str, Verdict] = field(default_factory=dict)
    #: (local path, why) of the files kept
    kept: list[tuple[str, str]] = field(default_factory=list)
    #: local path -> bytes its deletion frees
    sizes: dict[str, int] = field(default_factory=dict)


def _sharers(session: Session, paths: Sequence[str]) -> list[SupRsyncFile]:
    rows: list[SupRsyncFile] = []
    wanted = sorted(set(paths))
    for start in range(0, len(wanted), CHUNK):
        rows += session.scalars(select(F).where(F.local_path.in_(wanted[start:start + CHUNK])))
    return rows


def why_kept(row: SupRsyncFile, now: float, rules: dict[str, Policy],
             conflicted: set[int]) -> str | None:
    """Why a row of another archive sharing a local file still needs it, or None."""
    if row.removed is not None or row.ignore:
        return None
    who = f"file id {row.id} of archive {row.archive_name!r}"
    if row.id in conflicted:
        return f"{who} is in conflict"
    if not row.is_synced:
        return f"{who} is not verified yet"
    if row.deletable is not None and not row.deletable:
        return f"{who} is not deletable"
    if row.archive_name not in rules:
        return f"{who}: its archive published no deletion rule"
    rule = rules[row.archive_name].rule_for(row.remote_path)
    if rule is None or rule.delete_after is None:
        return f"{who}: its archive never deletes it"
    if rule.keep_newest:
        return f"{who}: its archive keeps the newest files of rule {rule.describe()}"
    if not now > row.timestamp + rule.delete_after:
        return f"{who} is not old enough for its archive's rule"
    return None


def published_policies(session: Session, archives: list[str]) -> dict[str, Policy]:
    """The policy each of these archives' agents published; one that published none,
    or one that cannot be read, is absent."""
    out: dict[str, Policy] = {}
    for archive in archives:
        policy = Policy.from_published(get_meta(session, DELETE_RULE_PREFIX + archive))
        if policy is not None:
            out[archive] = policy
    return out


def candidate_rows(session: Session, archive_name: str, after: tuple[float, int] | None,
                   cutoff: float | None, limit: int, verified_only: bool = True,
                   elsewhere: Sequence[int] = ()) -> list[SupRsyncFile]:
    """Local files of the archive, oldest registration first, after the (timestamp, id)
    ``after``; registered before ``cutoff`` when given. ``verified_only``: only the
    verified, deletable, sound rows free of conflicts (those the step may delete);
    verified at the primary or at one of the further destinations ``elsewhere``."""
    query = select(F).where(F.archive_name == archive_name, F.removed.is_(None), HEALTHY)
    if verified_only:
        query = query.where(verified_somewhere(elsewhere), DELETABLE,
                            ~exists().where(Conflict.file_id == F.id))
    if cutoff is not None:
        query = query.where(F.timestamp < cutoff)
    if after is not None:
        # The plain bound lets the (archive, timestamp) index start the page there.
        query = query.where(F.timestamp >= after[0],
                            or_(F.timestamp > after[0], F.id > after[1]))
    if verified_only and not elsewhere:
        query = via_verified_present_index(query, F)
    return list(session.scalars(query.order_by(F.timestamp, F.id).limit(limit)))


def kept_newest(manager: SupRsyncFilesManager, archive_name: str, policy: Policy,
                elsewhere: Sequence[int] = ()) -> set[int]:
    """Ids of the verified local files (at the primary or at one of ``elsewhere``) that a
    ``keep_newest`` rule keeps."""
    if not policy.keeps_newest:
        return set()
    likes = [F.remote_path.like(like_pattern(r.match), escape="\\")
             for r in policy.rules if r.keep_newest]

    def read(session: Session) -> set[int]:
        rows = session.execute(
            select(F.id, F.remote_path)
            .where(F.archive_name == archive_name, F.removed.is_(None),
                   verified_somewhere(elsewhere), or_(*likes))
            .order_by(F.timestamp.desc(), F.id.desc()).execution_options(yield_per=2000))
        return newest_kept(policy, ((i, p) for i, p in rows))

    return manager.read(read, what="newest files kept by the retention rules")


def note_filesystems(manager: SupRsyncFilesManager, archive_name: str,
                     disks: DiskWatch) -> None:
    """Show ``disks`` the file systems of the archive's oldest and newest local files."""

    def read(session: Session) -> list[str]:
        present = select(F.local_path).where(F.archive_name == archive_name,
                                             F.removed.is_(None))
        return [*session.scalars(present.order_by(F.timestamp).limit(FS_SAMPLE)),
                *session.scalars(present.order_by(F.timestamp.desc()).limit(FS_SAMPLE))]

    for path in manager.read(read, what="local files of the archive"):
        disks.device(path)


def _candidate(row: SupRsyncFile, disks: DiskWatch | None,
               verified: set[int] | None = None) -> Candidate:
    size, dev = 0, None
    try:
        st = os.lstat(row.local_path)
        size = st.st_blocks * 512 if hasattr(st, "st_blocks") else st.st_size
        dev = st.st_dev
    except (OSError, TypeError, ValueError):
        pass
    if disks is not None and dev is not None:
        disks.note(row.local_path, dev)
    synced = row.is_synced or (verified is not None and row.id in verified)
    return Candidate(row.id, row.remote_path, float(row.timestamp), synced,
                     row.deletable is None or bool(row.deletable), size, dev)


def plan_batch(manager: SupRsyncFilesManager, archive_name: str, rows: list[SupRsyncFile],
               policy: Policy, now: float, newest: set[int], need: dict[int, int],
               disks: DiskWatch | None = None, notes: set[str] | None = None,
               record: bool = True, refused: set[int] | None = None,
               elsewhere: Sequence[int] = ()) -> Plan:
    """Decide on a batch of this archive's rows (oldest first), leaving out ``refused``
    ids; ``need`` (bytes to free per file system) is reduced by what the early
    deletions free. A file another row still needs takes no share of ``need``. A row
    verified at one of the further destinations ``elsewhere`` counts as verified
    (how many copies it needs is judged after). The same decisions serve the
    deletion step and ``suprsync retention``."""
    plan = Plan()
    live = [r for r in rows if refused is None or r.id not in refused]
    verified = _verified_elsewhere(manager, [r.id for r in live if not r.is_synced], elsewhere)
    cands = {row.id: _candidate(row, disks, verified) for row in live}
    # First, what could go at all (early too where a file system is short) ...
    short = {fs: 1 << 62 for fs, n in need.items() if n > 0}
    maybe = {v.id: v for v in decide(list(cands.values()), policy, now, newest, short)}
    possible = [r for r in live if maybe[r.id].delete]
    blocked, by_path = _blocked(manager, archive_name, possible, policy, now, newest, maybe,
                                record, elsewhere)
    # ... then the share of the space to free, among the files nothing else holds back.
    paths = {row.id: row.local_path for row in live}
    final = {v.id: v for v in decide([c for i, c in cands.items() if paths[i] not in blocked],
                                     policy, now, newest, need)}
    for row in live:
        path = row.local_path
        if path in blocked:
            plan.verdicts[path] = maybe[row.id]
            plan.kept.append((path, blocked[path]))
            if notes is not None and path not in notes:
                notes.add(path)
                log.info("keeping %s for now: %s", path, blocked[path])
            continue
        verdict = final[row.id]
        plan.verdicts[path] = verdict
        if not verdict.delete:
            plan.kept.append((path, verdict.reason))
            continue
        plan.sizes[path] = cands[row.id].size
        plan.delete[path] = ([r for r in by_path[path] if r.archive_name == archive_name
                              and r.removed is None and not r.ignore],
                             [r.id for r in by_path[path] if r.removed is None])
    return plan


def _verified_elsewhere(manager: SupRsyncFilesManager, ids: list[int],
                        elsewhere: Sequence[int]) -> set[int]:
    """Those of ``ids`` verified at one of the further destinations ``elsewhere``."""
    if not ids or not elsewhere:
        return set()
    return set(manager.read(lambda s: verified_at(s, ids, elsewhere),
                            what="copies verified at further destinations"))


def _blocked(manager: SupRsyncFilesManager, archive_name: str, due: list[SupRsyncFile],
             policy: Policy, now: float, newest: set[int], verdicts: dict[int, Verdict],
             record: bool, elsewhere: Sequence[int] = ()
             ) -> tuple[dict[str, str], dict[str, list[SupRsyncFile]]]:
    """Local paths of these rows that another row still needs (path -> why), and every
    row naming each path."""
    by_path: dict[str, list[SupRsyncFile]] = defaultdict(list)
    if not due:
        return {}, by_path

    def read(session: Session):  # type: ignore[no-untyped-def]
        sharers = _sharers(session, [r.local_path for r in due])
        archives = sorted({r.archive_name for r in sharers} - {archive_name})
        return (sharers, published_policies(session, archives),
                conflicted_ids(session, [r.id for r in sharers]))

    sharers, rules, conflicted = manager.read(read, what="rows sharing local files")
    bad_dirs = check_local_dirs(manager, [(r.local_path, r.timestamp) for r in due],
                                record=record)
    for row in sharers:
        by_path[row.local_path].append(row)
    verified = _verified_elsewhere(
        manager, [r.id for r in sharers if r.archive_name == archive_name
                  and r.id not in verdicts and not r.is_synced], elsewhere)
    blocked: dict[str, str] = {}
    for path in dict.fromkeys(r.local_path for r in due):
        reasons = []
        for row in by_path[path]:
            if row.archive_name != archive_name:
                why = why_kept(row, now, rules, conflicted)
            elif row.removed is not None or row.ignore:
                why = None
            elif row.id in conflicted:
                why = f"file id {row.id} is in conflict"
            else:
                mine = verdicts.get(row.id) or decide([_candidate(row, None, verified)],
                                                      policy, now, newest)[0]
                why = None if mine.delete else f"file id {row.id}: {mine.reason}"
            if why:
                reasons.append(why)
        if os.path.dirname(path) in bad_dirs:
            reasons.insert(0, bad_dirs[os.path.dirname(path)])
        if reasons:
            blocked[path] = reasons[0]
    return blocked, by_path


def delete_due(manager: SupRsyncFilesManager, archive_name: str, delete_after: float | None,
               transport: Transport | None = None, verify_md5: bool = False,
               notes: set[str] | None = None, *, policy: Policy | None = None,
               disks: DiskWatch | None = None, dirs: EmptyDirs | None = None,
               clock: Clock, copies: CopyRule | None = None) -> DeleteReport:
    """Delete every local file due for deletion (see the module doc); report what happened.

    ``policy`` (default: ``delete_after`` for every file) says when; with ``disks``
    and its --min-free, verified files the policy would delete at all go early,
    oldest first, while their file system is short of space. ``dirs`` removes the
    directories left empty. With a transport, each remote copy is checked first. A
    file that cannot be deleted is logged (once per ``notes``) and kept; the pass
    goes on. ``clock`` dates the decisions and the deletions. ``copies``: the
    archive has several destinations; a file goes only once it is verified (and,
    where this agent ships, checked again) on ``copies.min_copies`` of them.
    """
    report = DeleteReport()
    notes = notes if notes is not None else set()
    policy = policy or Policy.delete_after(delete_after)
    text = policy.published()
    manager.write(lambda s: publish_policy(s, archive_name, text), what="publish deletion rule")
    now = clock()
    elsewhere = copies.elsewhere if copies is not None else ()
    newest = kept_newest(manager, archive_name, policy, elsewhere)
    need = {}
    if disks is not None:
        note_filesystems(manager, archive_name, disks)
        need = disks.short()
    shortest = policy.shortest_delay
    after: tuple[float, int] | None = None
    refused: set[int] = set()
    while shortest is not None or need:
        cutoff = None if need else now - shortest  # type: ignore[operator]
        due = manager.read(lambda s, a=after, c=cutoff: candidate_rows(
            s, archive_name, a, c, CHUNK, elsewhere=elsewhere), what="files due for deletion")
        if not due:
            break
        plan = plan_batch(manager, archive_name, due, policy, now, newest, need, disks, notes,
                          refused=refused, elsewhere=elsewhere)
        # Files the rules keep are not reported; those kept for another reason are.
        report.kept += [k for k in plan.kept if plan.verdicts[k[0]].delete]
        refused.update(r.id for r in due if plan.verdicts.get(r.local_path) is not None
                       and plan.verdicts[r.local_path].delete)
        groups = {p: g for p, (g, _) in plan.delete.items()}
        rows = [r for group in groups.values() for r in group]
        if copies is not None and rows:
            groups = _enough_copies(manager, copies, groups, verify_md5, report, now, notes)
        elif transport is not None and rows:
            try:
                good = _confirmed_on_remote(manager, transport, rows, verify_md5, report, now)
            except TransportError as exc:
                report.error = str(exc)
                report.timed_out = exc.timed_out
                log.error("not deleting anything now: cannot check the remote copies: %s", exc)
                break
            groups = {p: g for p, g in groups.items() if all(r.id in good for r in g)}
        removed = []
        for path in groups:
            verdict = plan.verdicts[path]
            when = _delete_one(clock, path, report, dirs, verdict.reason)
            if when is None:
                continue
            removed += [(file_id, when) for file_id in plan.delete[path][1]]
            if when:
                rule = verdict.rule or ""
                report.bytes_by_rule[rule] = (report.bytes_by_rule.get(rule, 0)
                                              + plan.sizes.get(path, 0))
            if verdict.for_space:
                report.for_space.append(path)
        manager.mark_removed_many(removed)
        failed_early = any(plan.verdicts[p].for_space and p not in groups for p in plan.delete)
        if disks is not None and need:
            need = disks.short()
        # A file chosen to free space that could not go leaves its share to the next
        # files of the same page: read it again (without the files decided already).
        if not (need and failed_early):
            after = (float(due[-1].timestamp), due[-1].id)
    if dirs is not None:
        report.removed_dirs = dirs.sweep()
    if disks is not None:
        report.space = list(disks.measure().values())
    return report


def _enough_copies(manager: SupRsyncFilesManager, rule: CopyRule,
                   groups: dict[str, list[SupRsyncFile]], verify_md5: bool,
                   report: DeleteReport, now: float,
                   notes: set[str]) -> dict[str, list[SupRsyncFile]]:
    """The local paths whose rows are all verified on at least ``rule.min_copies``
    destinations (each one this agent ships to is asked again first)."""
    rows = [r for g in groups.values() for r in g]
    ids = [r.id for r in rows]
    further = [t.key for t in rule.targets if t.key is not None]

    def read(session: Session) -> dict[int, set[int]]:
        forget_verifications(session, ids)
        return verified_at(session, ids, further)

    verified = manager.write(read, what="verified copies")
    good: dict[int, int] = defaultdict(int)
    for target in rule.targets:
        here = [r for r in rows if (r.is_synced if target.key is None
                                    else target.key in verified.get(r.id, ()))]
        if not here:
            continue
        if target.catalog is None:
            confirmed = {r.id for r in here}
        elif target.transport is None:
            continue
        else:
            try:
                confirmed = _confirmed_on_remote(target.catalog, target.transport, here,
                                                 verify_md5, report, now,
                                                 where=f" at destination {target.name}")
            except TransportError as exc:
                report.error, report.timed_out = str(exc), exc.timed_out
                log.error("cannot check the copies at destination %s now, not counting "
                          "them: %s", target.name, exc)
                continue
        for file_id in confirmed:
            good[file_id] += 1
    out, short = split_by_copies(groups, rule, good)
    for path, why in short:
        report.kept.append((path, why))
        if path not in notes:
            notes.add(path)
            log.info("keeping %s for now: %s", path, why)
    return out


def split_by_copies(groups: dict[str, list[SupRsyncFile]], rule: CopyRule,
                    good: dict[int, int]) -> tuple[dict[str, list[SupRsyncFile]],
                                                   list[tuple[str, str]]]:
    """(the local paths whose rows all have ``rule.min_copies`` good copies, (path, why)
    of the others); ``good``: file id -> its good copies."""
    out, short = {}, []
    for path, group in groups.items():
        have = min(good.get(r.id, 0) for r in group)
        if have >= rule.min_copies:
            out[path] = group
        else:
            short.append((path, f"verified on {have} of the {len(rule.targets)} "
                                f"destinations, --min-copies is {rule.min_copies}"))
    return out, short


def catalog_copies(session: Session, rows: Sequence[SupRsyncFile],
                   rule: CopyRule) -> dict[int, int]:
    """file id -> its copies the catalog shows verified with the local md5, at the
    primary and at the rule's further destinations (no destination is asked)."""
    further = [t.key for t in rule.targets if t.key is not None]
    verified = verified_at(session, [r.id for r in rows], further)
    primary = any(t.key is None for t in rule.targets)
    return {r.id: int(primary and bool(r.is_synced)) + len(verified.get(r.id, ()))
            for r in rows}


def _confirmed_on_remote(manager: SupRsyncFilesManager, transport: Transport,
                         rows: list[SupRsyncFile], verify_md5: bool,
                         report: DeleteReport, now: float, where: str = "") -> set[int]:
    """Ids of the rows whose remote copy still matches; the others are handled here
    (``where`` names the destination in the logs)."""
    rels = {}
    for row in rows:
        try:
            rels[row.id] = normalize_remote_path(row.remote_path)
        except (ValueError, TypeError):
            continue
    local: dict[int, os.stat_result] = {}
    confirmed: set[int] = set()
    for row in rows:
        try:
            local[row.id] = check_local_file(row.local_path)
        except FileNotFoundError:
            confirmed.add(row.id)  # recorded as already gone
        except OSError as exc:
            _changed(manager, row, f"the local file is no longer a regular file: {exc}", report,
                     now)
    paths = sorted({rels[i] for i in local if i in rels})
    remote = transport.stat(paths)
    total = sum(st.st_size for st in local.values())
    sums = transport.checksums(paths, total_bytes=total) if verify_md5 else {}
    for row in rows:
        st = local.get(row.id)
        if st is None:
            continue
        rel = rels.get(row.id)
        there = remote.get(rel) if rel is not None else None
        verdict = judge_before_delete(
            row.local_md5sum, st.st_size, st.st_mtime, None if there is None else there.size,
            None if there is None else there.mtime,
            sums.get(rel) if rel is not None else None, verify_md5)
        reason = verdict.detail
        if verdict.ok:
            confirmed.add(row.id)
        elif _local_intact(manager, row, reason, report, now):
            if rel is not None and there is not None and rel not in sums:
                sums.update(transport.checksums([rel], total_bytes=there.size))
            observed = sums.get(rel) if rel is not None else None
            if judge_copy(row.local_md5sum, observed).ok:
                confirmed.add(row.id)  # same bytes, only the mtime moved
                continue
            log.error("not deleting %s: %s%s; its local file still holds the registered "
                      "bytes, so it is queued to be sent again", row.local_path, reason, where)
            manager.requeue(row.id, observed)
            report.requeued.append((row.local_path, reason))
    return confirmed


def _local_intact(manager: SupRsyncFilesManager, row: SupRsyncFile, reason: str,
                  report: DeleteReport, now: float) -> bool:
    """True when the local file still has the registered md5; else record a conflict."""
    try:
        current = md5_file(row.local_path)
    except OSError as exc:
        report.kept.append((row.local_path, f"{reason}; cannot hash it: {exc.strerror or exc}"))
        log.error("not deleting %s: %s; cannot hash it: %s", row.local_path, reason, exc)
        return False
    if current == row.local_md5sum:
        return True
    _changed(manager, row, f"{reason}: the local file changed after its copy was verified "
                           f"(md5 {row.local_md5sum} -> {current})", report, now)
    return False


def _changed(manager: SupRsyncFilesManager, row: SupRsyncFile, detail: str,
             report: DeleteReport, now: float) -> None:
    conflict = NewConflict(row.id, CHANGED, None, detail)
    new = manager.write(lambda s: record_conflicts(s, row.archive_name, [conflict], now),
                        what="record conflict")
    report.conflicts.append((row.local_path, detail))
    if new:
        log.error("conflict: not deleting %s (file id %s) and not sending it again: %s; the "
                  "verified remote copy is kept; resolve it with 'suprsync resolve'",
                  row.local_path, row.id, detail)


def _delete_one(clock: Clock, path: str, report: DeleteReport,
                dirs: EmptyDirs | None = None, why: str = "verified") -> float | None:
    """Delete one local file; the removed time to record, or None if kept.

    The times of a chunk are recorded together; if the agent dies before that, the
    next pass finds these files gone and records them with removed = 0.
    """
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            raise IsADirectoryError(f"{path!r} is a directory")
        folder = os.path.dirname(path)
        before = dirs.before(folder) if dirs is not None else None
        os.remove(path)
        if dirs is not None:
            dirs.after(folder, before)
    except FileNotFoundError:
        log.info("%s was already gone; recording it as removed", path)
        report.already_gone.append(path)
        return 0.0
    except OSError as exc:
        log.error("cannot delete %s, keeping it: %s", path, exc)
        report.kept.append((path, str(exc)))
        return None
    log.info("deleted local copy %s: %s", path, why)
    report.deleted.append(path)
    return clock()
