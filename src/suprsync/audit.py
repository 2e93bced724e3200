"""``suprsync audit``: compare an archive's catalog with what its destination holds.

Two passes, each with bounded memory however large the archive:

1. *Unknown files.* The destination lists its files in bytewise order (a
   stream), the catalog streams the archive's remote paths in the same order,
   and the two sorted streams are merged: a remote file with no row is unknown.
2. *Synced files.* The rows the catalog calls synced (not ignored, not quarantined) are read
   in pages (keyset pagination on the (archive, timestamp) index, so no read
   transaction stays open during remote calls). Each page costs one remote stat,
   and with ``md5`` one remote md5sum. A copy that is missing, has another size
   than the local file, or has the wrong md5 is a problem. When the local copy is
   gone it cannot be re-sent: the file is *lost on the remote*.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import stat
import sys
from collections.abc import Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any, TextIO

from sqlalchemy import and_, func, or_, select

from .catalog.conflicts import list_conflicts
from .catalog.copies import Registered, registered
from .catalog.destqueue import DestinationCopies
from .catalog.pathkeys import not_canonical_sql
from .catalog.quarantine import HEALTHY
from .catalog.schema import NOT_IGNORED, SYNCED, DestinationCopy, SupRsyncFile
from .catalog.store import SupRsyncFilesManager
from .options import (
    DEFAULT_BATCH,
    DEFAULT_LIST_LIMIT,
    ConfigError,
    destination_from_args,
    password_file_from_args,
    remote_shell_from_args,
)
from .paths import is_canonical, normalize_remote_path, normalized
from .progress import Bar
from .transport import (
    Access,
    Destination,
    DestinationError,
    TransferOptions,
    Transport,
    open_destination,
)
from .verdicts import judge_audit, judge_copy

F = SupRsyncFile
DC = DestinationCopy

#: Entries shown per category in the human summary.
SHOW = 10

#: Problems with a catalogued file, then files the catalog does not know.
FILE_PROBLEMS = ("lost_on_remote", "missing", "size_mismatch", "md5_mismatch", "invalid_path")
CATEGORIES = (*FILE_PROBLEMS, "conflict", "unknown", "temporary")
#: Categories that make the exit status 1 (temporary files are expected while an agent copies).
FAILING = (*FILE_PROBLEMS, "conflict", "unknown")
TITLES = {
    "lost_on_remote": "LOST-ON-REMOTE",
    "missing": "missing on remote",
    "size_mismatch": "size differs",
    "md5_mismatch": "md5 differs",
    "invalid_path": "invalid remote path",
    "conflict": "conflict",
    "unknown": "unknown on remote",
    "temporary": "temporary (rsync)",
}

#: rsync's temporary names: ``.<name>.XXXXXX`` beside the file being written.
_TEMP_NAME = re.compile(r"\.(.+)\.[A-Za-z0-9]{6}", re.DOTALL)


class AuditError(ValueError):
    """Bad flags, or the audit cannot run; one line for the user."""


@dataclass
class Category:
    """The entries of one kind of problem: exact count, first ``limit`` items."""

    limit: int
    count: int = 0
    items: list[Any] = field(default_factory=list)

    def add(self, item: Any) -> None:
        self.count += 1
        if len(self.items) < self.limit:
            self.items.append(item)

    @property
    def truncated(self) -> bool:
        return self.count > len(self.items)


@dataclass
class AuditReport:
    """What an audit found."""

    archive: str
    destination: str
    md5: bool
    requeue: bool
    list_limit: int
    catalog_rows: int = 0
    remote_files: int = 0
    checked: int = 0
    requeued: int = 0
    categories: dict[str, Category] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.categories = {name: Category(self.list_limit) for name in CATEGORIES}

    @property
    def ok(self) -> bool:
        """True when nothing that needs attention was found."""
        return not any(self.categories[name].count for name in FAILING)

    def as_json(self) -> dict[str, Any]:
        """Everything, with each list capped at list_limit entries."""
        return {
            "archive": self.archive,
            "destination": self.destination,
            "md5": self.md5,
            "requeue": self.requeue,
            "ok": self.ok,
            "catalog_rows": self.catalog_rows,
            "remote_files": self.remote_files,
            "synced_checked": self.checked,
            "requeued": self.requeued,
            "counts": {name: c.count for name, c in self.categories.items()},
            "list_limit": self.list_limit,
            "truncated": {name: c.truncated for name, c in self.categories.items()},
            "files": {name: c.items for name, c in self.categories.items()},
            "warnings": self.warnings,
        }


class Progress(Bar):
    """The audit's one-line progress display on a terminal; silent otherwise."""

    def __init__(self, out: TextIO | None = None, every: float = 0.2) -> None:
        super().__init__("audit", out=out, every=every, enabled=out is not None)

    def update(self, text: str, force: bool = False) -> None:  # type: ignore[override]
        self.show(text, force)

    def done(self) -> None:
        self.close()


# ------------------------------------------------------------- the catalog


def _key(path: str) -> bytes:
    """The bytewise sort key of a path (names may hold undecodable bytes)."""
    return path.encode("utf-8", "surrogateescape")


def _stream(manager: SupRsyncFilesManager, query, batch: int) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    """Rows of one query, fetched batch rows at a time (a server-side cursor on PostgreSQL)."""
    with manager.engine.connect() as conn:
        yield from conn.execution_options(yield_per=batch).execute(query)


def known_paths_sorted(manager: SupRsyncFilesManager, archive: str,
                       batch: int) -> Iterator[str]:
    """The archive's remote paths in bytewise order (duplicates possible)."""
    query = (select(F.remote_path).where(F.archive_name == archive)
             .order_by(manager.dialect.bytewise(F.remote_path)))
    for (remote_path,) in _stream(manager, query, batch):
        if isinstance(remote_path, str):  # not NULL, not a BLOB (quarantined rows)
            yield remote_path


def oddly_written_paths(manager: SupRsyncFilesManager, archive: str, batch: int) -> set[str]:
    """Normalized remote paths of the rows whose remote path is not written canonically.

    Their order in the catalog is not the order of the files they name, so the
    merge looks them up here. Catalogs normally have none.
    """
    query = select(F.remote_path).where(F.archive_name == archive, not_canonical_sql())
    found = set()
    for (remote_path,) in _stream(manager, query, batch):
        try:
            found.add(normalize_remote_path(remote_path))
        except (ValueError, TypeError):
            continue
    return found


def _synced(dest: int | None) -> tuple[Any, list[Any]]:
    """(FROM clause, conditions) of the rows verified at a destination (None: the primary)."""
    if dest is None:
        return F, [SYNCED]
    joined = F.__table__.join(DC, and_(DC.file_id == F.id, DC.dest == dest))
    return joined, [DC.verified.is_(True), DC.remote_md5sum == F.local_md5sum]


def synced_pages(manager: SupRsyncFilesManager, archive: str,
                 batch: int, dest: int | None = None) -> Iterator[list[Any]]:
    """Synced, not ignored rows of the archive (at ``dest``: see :func:`_synced`), oldest
    first, batch rows per short read."""
    columns = (F.id, F.local_path, F.remote_path, F.local_md5sum, F.removed, F.timestamp)
    source, synced = _synced(dest)
    last: tuple[float, int] | None = None
    while True:
        query = select(*columns).select_from(source).where(
            F.archive_name == archive, *synced, NOT_IGNORED, HEALTHY)
        if last is not None:
            query = query.where(F.timestamp >= last[0],
                                or_(F.timestamp > last[0], and_(F.timestamp == last[0],
                                                                F.id > last[1])))
        query = query.order_by(F.timestamp, F.id).limit(batch)
        rows = manager.read(lambda s, q=query: s.execute(q).all(), what="audit read")
        if not rows:
            return
        yield rows
        last = (rows[-1].timestamp, rows[-1].id)


def count_rows(manager: SupRsyncFilesManager, archive: str, synced_only: bool = False,
               dest: int | None = None) -> int:
    """Rows of the archive (or only its synced, not ignored ones, at ``dest``)."""
    query = select(func.count()).select_from(F).where(F.archive_name == archive)
    if synced_only:
        source, synced = _synced(dest)
        query = select(func.count()).select_from(source).where(
            F.archive_name == archive, *synced, NOT_IGNORED, HEALTHY)
    return int(manager.read(lambda s: s.scalar(query), what="audit count") or 0)


# ------------------------------------------------------------ the passes


def is_temporary(path: str) -> bool:
    """True for names rsync gives files it is still writing: ``.<name>.XXXXXX``."""
    return _TEMP_NAME.fullmatch(path.rsplit("/", 1)[-1]) is not None


def unknown_files(remote: Iterable[str], known: Iterable[str],
                  also_known: set[str] | frozenset[str] = frozenset()) -> Iterator[str]:
    """Remote paths that are not in ``known``; both must come in bytewise order.

    Only the current item of each stream is held. ``also_known`` is consulted for
    remote paths the merge did not find. Raises AuditError when an input is out
    of order, since the result would then be wrong.
    """
    known_iter = iter(known)
    current: bytes | None = None
    exhausted = False

    def advance() -> None:
        nonlocal current, exhausted
        for path in known_iter:
            if not is_canonical(path):
                continue
            key = _key(path)
            if current is not None and key < current:
                raise AuditError("the catalog did not return remote paths in bytewise order")
            current = key
            return
        exhausted = True

    advance()
    previous: bytes | None = None
    for path in remote:
        key = _key(path)
        if previous is not None and key <= previous:
            raise AuditError("the remote listing is not in bytewise order")
        previous = key
        while not exhausted and current is not None and current < key:
            advance()
        if current != key and path not in also_known:
            yield path


def _list_remote(transport: Transport, manager: SupRsyncFilesManager, report: AuditReport,
                 batch: int, progress: Progress) -> None:
    """Pass 1: remote files the archive's catalog rows do not name."""
    remote = transport.list_files(expected_files=report.catalog_rows,
                                  on_warning=report.warnings.append)

    def counted() -> Iterator[str]:
        for path in remote:
            report.remote_files += 1
            progress.update(f"listing the remote: {report.remote_files} files")
            yield path

    with closing(remote), closing(counted()) as listed:
        # The catalog is read only once the remote has listed itself (sort waits
        # for find), so every file found was registered before the catalog is read.
        first = next(listed, None)
        if first is None:
            return
        also_known = oddly_written_paths(manager, report.archive, batch)
        with closing(known_paths_sorted(manager, report.archive, batch)) as known:
            for path in unknown_files(_chain(first, listed), known, also_known):
                report.categories["temporary" if is_temporary(path) else "unknown"].add(path)
    progress.update(f"listing the remote: {report.remote_files} files", force=True)
    progress.done()


def _chain(first: str, rest: Iterable[str]) -> Iterator[str]:
    yield first
    yield from rest


def _local_state(row: Any) -> os.stat_result | None:
    """The local file's stat when it is a regular file the agent could send again."""
    if row.removed is not None:
        return None
    try:
        st = os.stat(row.local_path)
    except OSError:
        return None
    return st if stat.S_ISREG(st.st_mode) else None


def _check_page(rows: list[Any], transport: Transport, manager: Any,
                report: AuditReport) -> None:
    """Pass 2 for one page: judge each row's remote copy, re-queue when asked."""
    rels: dict[int, str] = {}
    for row in rows:
        try:
            rels[row.id] = normalized(row.remote_path)
        except (ValueError, TypeError) as exc:
            report.categories["invalid_path"].add(_entry(row, None, str(exc)))
    paths = sorted(set(rels.values()))
    there = transport.stat(paths)
    sums: dict[str, str] = {}
    if report.md5:
        present = [p for p in paths if p in there]
        sums = transport.checksums(present, total_bytes=sum(there[p].size for p in present))
    for row in rows:
        rel = rels.get(row.id)
        if rel is None:
            continue
        report.checked += 1
        local = _local_state(row)
        remote = there.get(rel)
        observed = sums.get(rel)
        # A local file modified after registration says nothing about the copy's size.
        local_size = (local.st_size if local is not None and local.st_mtime <= row.timestamp
                      else None)
        verdict = judge_audit(row.local_md5sum, None if remote is None else remote.size,
                              local_size, observed, report.md5)
        if verdict.ok:
            continue
        kind, detail = verdict.kind, verdict.detail
        if local is None:
            gone = "removed" if row.removed is not None else "gone"
            report.categories["lost_on_remote"].add(
                _entry(row, rel, f"{detail}; local copy {gone}, cannot be re-sent",
                       reason=kind))
            continue
        requeued = False
        if report.requeue:
            manager.requeue(row.id, None if judge_copy(row.local_md5sum, observed).ok
                            else observed)
            report.requeued += 1
            requeued = True
        report.categories[kind].add(_entry(row, rel, detail, requeued=requeued))


def _entry(row: Any, rel: str | None, detail: str, **extra: Any) -> dict[str, Any]:
    return {"id": row.id, "remote_path": rel if rel is not None else row.remote_path,
            "local_path": row.local_path, "detail": detail, **extra}


def audit_archive(manager: SupRsyncFilesManager, transport: Transport, archive: str,
                  md5: bool = False, requeue: bool = False, batch: int = DEFAULT_BATCH,
                  list_limit: int = DEFAULT_LIST_LIMIT,
                  progress: Progress | None = None,
                  dest: Registered | None = None) -> AuditReport:
    """Compare the archive's catalog with its destination (see the module doc).

    With ``requeue``, every problem file whose local copy still exists is queued
    to be copied again; the remote md5, when known, makes that copy a re-send.
    ``dest``: one of the archive's further destinations (its copies are judged, and
    re-queued there). Raises TransportError when the destination cannot be listed or
    checked.
    """
    progress = progress or Progress()
    key = None if dest is None or dest.primary else dest.key
    queue: Any = manager if key is None else DestinationCopies(manager, dest)  # type: ignore[arg-type]
    report = AuditReport(archive, transport.describe(), md5, requeue, list_limit)
    report.catalog_rows = count_rows(manager, archive)
    for conflict in manager.read(lambda s: list_conflicts(s, archive), what="conflicts"):
        report.categories["conflict"].add(
            {"id": conflict["id"], "remote_path": conflict["remote_path"],
             "local_path": conflict["local_path"], "other_id": conflict["other_id"],
             "detail": conflict["detail"]})
    _list_remote(transport, manager, report, batch, progress)
    total = count_rows(manager, archive, synced_only=True, dest=key) if progress.out else 0
    for rows in synced_pages(manager, archive, batch, dest=key):
        _check_page(rows, transport, queue, report)
        progress.update(f"checking synced files: {report.checked}/{total}")
    progress.update(f"checking synced files: {report.checked}/{total}", force=True)
    progress.done()
    return report


# ------------------------------------------------------------- the command


def destination_record(ns: argparse.Namespace,
                       manager: SupRsyncFilesManager) -> Registered | None:
    """The catalog's record of --destination-id (None without it); AuditError if unknown."""
    name = getattr(ns, "destination_id", None)
    if name is None:
        return None
    known = manager.read(lambda s: registered(s, ns.archive_name), what="destinations")
    for rec in known:
        if rec.name == name:
            return rec
    names = ", ".join(r.name for r in known) or "none recorded"
    raise AuditError(f"archive {ns.archive_name!r} has no destination {name!r} ({names})")


def transport_from_args(ns: argparse.Namespace, dest: Registered | None = None) -> Transport:
    """The destination named by the flags (or, when they name none, ``dest``'s URL);
    AuditError for flags that cannot work."""
    if ns.cmd_timeout is not None and ns.cmd_timeout < 0:
        raise AuditError("--cmd-timeout must not be negative")
    options = TransferOptions(cmd_timeout=ns.cmd_timeout or None)
    if dest is not None and ns.destination is None and ns.remote_basedir is None:
        ns = argparse.Namespace(**{**vars(ns), "destination": dest.url})
    try:
        where = destination_from_args(ns)
    except ConfigError as exc:
        raise AuditError(str(exc)) from None
    try:
        password_file = password_file_from_args(ns, where)
        remote_shell = remote_shell_from_args(ns, where)
    except ConfigError as exc:
        raise AuditError(str(exc)) from None
    access = Access(key=ns.ssh_key, port=ns.ssh_port, known_hosts=ns.ssh_known_hosts,
                    connect_timeout=ns.cmd_timeout or 20.0, extra_options=tuple(ns.ssh_option),
                    remote_shell=remote_shell, password_file=password_file)
    if where.scheme != "ssh":
        return _open(where, options, access, ns.md5)
    host = where.login or ""
    if host.startswith("-") or any(c.isspace() for c in host):
        raise AuditError(f"--ssh-host is not a host name: {host!r}")
    if shutil.which("ssh") is None:
        raise AuditError("ssh is not installed (no 'ssh' on PATH) but the destination is "
                         "reached with ssh")
    for opt in ns.ssh_option:
        if "=" not in opt:
            raise AuditError(f"--ssh-option must look like KEY=VALUE, not {opt!r}")
    for flag, path in (("--ssh-key", ns.ssh_key), ("--ssh-known-hosts", ns.ssh_known_hosts)):
        if path is not None and not os.access(path, os.R_OK):
            raise AuditError(f"{flag} {path!r} does not exist or is not readable")
        if path is not None and "${" in path:
            raise AuditError(f"{flag}: ssh cannot take a path containing '${{'")
    return _open(where, options, access, ns.md5)


def _open(where: Destination, options: TransferOptions, access: Access, md5: bool) -> Transport:
    try:
        transport = open_destination(where, options, access)
    except DestinationError as exc:
        raise AuditError(str(exc)) from None
    if md5 and "md5" not in transport.capabilities.hashes:
        raise AuditError(f"--md5: {transport.describe()} computes no md5 of its copies")
    return transport


def _shown(path: str) -> str:
    """A path on one line: control characters and backslashes escaped."""
    return "".join(ch if ch.isprintable() and ch != "\\" else ch.encode(
        "unicode_escape", "backslashreplace").decode("ascii") for ch in path)


def summary(report: AuditReport, show: int = SHOW) -> str:
    """The human-readable result: counts per category, then the first files of each."""
    lines = [f"audit of archive {report.archive!r} on {report.destination}",
             f"  catalog rows {report.catalog_rows}, synced files checked {report.checked}"
             f"{' (with md5)' if report.md5 else ' (size only; --md5 also compares md5)'}, "
             f"remote files {report.remote_files}"]
    for name in CATEGORIES:
        c = report.categories[name]
        lines.append(f"  {TITLES[name]:<20} {c.count:>8}")
    if report.categories["lost_on_remote"].count:
        lines.append(f"  !!! {report.categories['lost_on_remote'].count} file(s) LOST-ON-REMOTE:"
                     " the remote copy is missing or wrong and the local copy is gone")
    if report.requeue:
        lines.append(f"  requeued {report.requeued} file(s) to be copied again")
    for warning in report.warnings:
        lines.append(f"  warning: {_shown(warning)}")
    for name in CATEGORIES:
        c = report.categories[name]
        if not c.count:
            continue
        lines.append(f"{TITLES[name]} ({c.count}):")
        for item in c.items[:show]:
            if isinstance(item, str):
                lines.append(f"  {_shown(item)}")
            else:
                lines.append(f"  {_shown(item['remote_path'])}  <- {_shown(item['local_path'])}"
                             f"  ({item['detail']})")
        if c.count > show:
            lines.append(f"  ... and {c.count - show} more (--json lists them)")
    lines.append("OK: the destination matches the catalog" if report.ok
                 else "PROBLEMS FOUND")
    return "\n".join(lines)


def run_audit(ns: argparse.Namespace, manager: SupRsyncFilesManager,
              out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Audit, print the result; 0 when everything matches, 1 when problems were found."""
    out = out or sys.stdout
    err = err or sys.stderr
    dest = destination_record(ns, manager)
    transport = transport_from_args(ns, dest)
    try:
        report = audit_archive(manager, transport, ns.archive_name, md5=ns.md5,
                               requeue=ns.requeue, batch=ns.batch,
                               list_limit=ns.list_limit if ns.json else SHOW,
                               progress=Progress(None if ns.json else err), dest=dest)
    finally:
        transport.close()
    if ns.json:
        json.dump(report.as_json(), out, indent=1)
        out.write("\n")
    else:
        out.write(summary(report) + "\n")
    lost = report.categories["lost_on_remote"].count
    if lost:
        err.write(f"suprsync audit: LOST-ON-REMOTE: {lost} file(s) of archive "
                  f"{report.archive!r} are missing or wrong on the remote and their local "
                  f"copy is gone\n")
    return 0 if report.ok else 1

