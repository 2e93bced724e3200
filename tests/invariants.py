"""Integrity invariants of a catalog and its destinations, checked from the outside.

``check_invariants`` reads a catalog with plain sqlite3 (or SQLAlchemy for a URL),
looks at the local files and at each archive's remote base dir on this host, and
raises AssertionError listing every violation, each naming file ids and paths:

1. no data lost: a row whose local file is gone has a copy with its registered md5
   at its destination (ignored rows and rows of archives not given are not checked);
2. no false verification: a row that reads verified (``remote_md5sum ==
   local_md5sum``, both non-NULL) has a regular file, reached through no symlink,
   holding exactly that md5 at base dir + normalized remote path; a row whose remote
   path does not normalize never reads verified;
3. nothing written outside the base dirs: a ``Fence`` taken with ``snapshot_fence``
   before the run finds nothing new, changed or gone beside the excluded dirs;
4. one finalization file per (archive, finalized timecode, instance), locally under
   ``file_root/<tc>/<instance>/`` and remotely under ``<base>/<tc>/suprsync/<instance>/``,
   plus one per further finalization file recorded for it in the catalog's
   ``suprsync_supplements_v0`` (the rule is ``finalization_problem``, in one place);
5. no false completion: a finalization file at an archive's destination, registered
   as a row, has beside it every file its dir's rows surely not ignored name that were
   registered before it (``check_every_destination`` also checks their md5 at
   further destinations).

Rows written by other programs are untrusted: NULL columns, bytes that are not UTF-8
and numbers stored as text never crash the checker. Text is read as bytes and paths
are decoded with surrogateescape, as the file system names them.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import sqlite3
import stat
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from suprsync.catalog.settings import CATALOG_FILE_SUFFIXES, FILES_TABLE
from suprsync.paths import normalize_remote_path

#: The most finalization files one (archive, timecode, instance) may have, besides the
#: further files (for late files) recorded in the supplements table.
MAX_FINALIZATION_FILES = 1
SUPPLEMENTS_TABLE = "suprsync_supplements_v0"

_FINAL_RE = re.compile(r"^(-?[0-9]+)_(.+)_([0-9]+)_finalized\.yaml$", re.S)
_MAX_PROBLEMS = 60

_QUERY = (
    "SELECT id, local_path, local_md5sum, archive_name, remote_path, remote_md5sum, "
    '"ignore", '
    "CASE WHEN remote_md5sum IS NOT NULL AND remote_md5sum = local_md5sum "
    "THEN 1 ELSE 0 END "
    f"FROM {FILES_TABLE} ORDER BY id"
)


# ------------------------------------------------------------------ reading the catalog


@dataclass(frozen=True)
class Row:
    """One catalog row as read, values left as the database holds them (text as bytes)."""

    id: Any
    local_path: Any
    local_md5sum: Any
    archive_name: Any
    remote_path: Any
    remote_md5sum: Any
    ignore: Any
    sql_verified: bool

    @property
    def verified(self) -> bool:
        """True when the catalog says the remote copy is verified (by SQL or by value)."""
        same = (self.remote_md5sum is not None and self.local_md5sum is not None
                and self.remote_md5sum == self.local_md5sum)
        return self.sql_verified or same

    @property
    def ignored(self) -> bool:
        """True only when ``ignore`` is unambiguously set (a nonzero number)."""
        value = self.ignore
        if isinstance(value, (bytes, str)):
            try:
                value = float(value)
            except ValueError:
                return False
        if isinstance(value, (bool, int, float)):
            return not (isinstance(value, float) and math.isnan(value)) and value != 0
        return False

    @property
    def surely_kept(self) -> bool:
        """True only when ``ignore`` is unambiguously unset (NULL or a number 0): the
        rows every program counts as part of their dir."""
        value = self.ignore
        return value is None or (isinstance(value, (bool, int, float)) and value == 0)

    def describe(self) -> str:
        return (f"file id {self.id!r} (archive {show(self.archive_name)}, local "
                f"{show(self.local_path)}, remote {show(self.remote_path)})")


def as_text(value: Any) -> str | None:
    """Text of a catalog value: bytes decoded with surrogateescape; None for NULL."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return str(value)


def show(value: Any) -> str:
    """A printable form of a catalog value."""
    text = as_text(value)
    return "NULL" if text is None else repr(text)


def is_url(db: str | os.PathLike[str]) -> bool:
    return isinstance(db, str) and "://" in db


def read_rows(db: str | os.PathLike[str]) -> list[Row]:
    """Every row of the files table; empty when the table does not exist yet."""
    if is_url(db):
        return _read_rows_url(str(db))
    path = os.fspath(db)
    if not os.path.exists(path):
        return []
    # Read-write, so that a hot journal left by a killed writer can be rolled back.
    conn = sqlite3.connect(path, timeout=60)
    conn.text_factory = bytes
    try:
        try:
            raw = conn.execute(_QUERY).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []
            raise
    finally:
        conn.close()
    return [Row(*r[:7], sql_verified=bool(r[7])) for r in raw]


def _query_url(url: str, table: str, query: str) -> list[tuple[Any, ...]]:
    """The rows of a query on a catalog URL; none when ``table`` does not exist."""
    from sqlalchemy import create_engine, inspect, text

    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    engine = create_engine(url)
    try:
        if not inspect(engine).has_table(table):
            return []
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(query))]
    finally:
        engine.dispose()


def read_supplements(db: str | os.PathLike[str]) -> dict[tuple[str, str, str], int]:
    """(archive, timecode, instance) -> further finalization files recorded in the catalog."""
    query = (f"SELECT archive_name, timecode, instance_id, count(*) FROM {SUPPLEMENTS_TABLE}"
             " GROUP BY archive_name, timecode, instance_id")
    if is_url(db):
        raw = _query_url(str(db), SUPPLEMENTS_TABLE, query)
    else:
        if not os.path.exists(os.fspath(db)):
            return {}
        conn = sqlite3.connect(os.fspath(db), timeout=60)
        try:
            raw = conn.execute(query).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return {}
            raise
        finally:
            conn.close()
    return {(str(a), str(tc), str(i)): int(n) for a, tc, i, n in raw}


def _read_rows_url(url: str) -> list[Row]:
    return [Row(*r[:7], sql_verified=bool(r[7])) for r in _query_url(url, FILES_TABLE, _QUERY)]


# ------------------------------------------------------------------ files on this host


_md5_cache: dict[tuple[str, int, int, int], str] = {}


def md5_of(path: str) -> str:
    """Hex md5 of a file's bytes (cached by inode, size and mtime)."""
    st = os.stat(path)
    key = (path, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _md5_cache:
        h = hashlib.md5()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _md5_cache[key] = h.hexdigest()
    return _md5_cache[key]


def destination_md5(base: Path, remote: str) -> tuple[str | None, str]:
    """(md5, why not) of base/remote: None with a reason unless it is a regular file
    reached from base through real directories only."""
    current = os.fspath(base)
    parts = remote.split("/")
    for i, part in enumerate(parts):
        current = os.path.join(current, part)
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            return None, f"{current!r} does not exist"
        except OSError as exc:
            return None, f"{current!r}: {exc}"
        last = i == len(parts) - 1
        if stat.S_ISLNK(st.st_mode):
            return None, f"{current!r} is a symlink"
        if not last and not stat.S_ISDIR(st.st_mode):
            return None, f"{current!r} is not a directory"
        if last and not stat.S_ISREG(st.st_mode):
            return None, f"{current!r} is not a regular file"
    try:
        return md5_of(current), ""
    except OSError as exc:
        return None, f"{current!r}: {exc}"


def md5_text(value: Any) -> str | None:
    """A catalog md5 as text, or None when it cannot be an md5 (NULL, not UTF-8)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return str(value)


# ------------------------------------------------------------------ the fence


@dataclass(frozen=True)
class Fence:
    """What a directory held outside its excluded dirs, to compare with later."""

    root: Path
    exclude: tuple[Path, ...]
    entries: Mapping[str, tuple]


def _excluded(path: Path, exclude: Iterable[Path]) -> bool:
    return any(path == e or e in path.parents for e in exclude)


def _scan(root: Path, exclude: tuple[Path, ...]) -> dict[str, tuple]:
    """relative path -> (kind, size, mtime_ns, md5 or link target) of everything under
    root except the excluded dirs (and the directories leading to them)."""
    entries: dict[str, tuple] = {}
    leading = {p for e in exclude for p in e.parents}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        names = list(dirnames) + list(filenames)
        dirnames[:] = [d for d in dirnames if not _excluded(here / d, exclude)]
        for name in names:
            path = here / name
            if _excluded(path, exclude):
                continue
            rel = os.fspath(path.relative_to(root))
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(st.st_mode):
                entries[rel] = ("symlink", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                if path not in leading:  # a dir leading to a base dir may be created
                    entries[rel] = ("dir", st.st_mode & 0o7777)
            elif stat.S_ISREG(st.st_mode):
                entries[rel] = ("file", st.st_size, st.st_mtime_ns, md5_of(os.fspath(path)))
            else:
                entries[rel] = ("other", stat.S_IFMT(st.st_mode))
    return entries


def snapshot_fence(fence: str | os.PathLike[str], exclude: Iterable[str | os.PathLike[str]]
                   ) -> Fence:
    """Record everything under fence but outside the exclude dirs (the remote base dirs,
    the local trees, the catalog file): take it before the agents run and pass it to
    ``check_invariants(..., fence=...)``, which adds the catalog's own files and the
    destinations to the exclusions."""
    root = Path(fence).resolve()
    excl = tuple(sorted({Path(e).resolve() for e in exclude}))
    return Fence(root, excl, _scan(root, excl))


def fence_problems(fence: Fence, extra_exclude: Iterable[Path] = ()) -> list[str]:
    """What changed under the fence since the snapshot, outside the exclusions."""
    excl = tuple(sorted(set(fence.exclude) | {Path(e).resolve() for e in extra_exclude}))
    before = {k: v for k, v in fence.entries.items() if not _excluded(fence.root / k, excl)}
    now = _scan(fence.root, excl)
    problems = []
    for rel in sorted(set(before) | set(now)):
        was, is_ = before.get(rel), now.get(rel)
        if was == is_:
            continue
        where = fence.root / rel
        if was is None:
            problems.append(f"outside the base dirs: {str(where)!r} was created ({is_[0]})")
        elif is_ is None:
            problems.append(f"outside the base dirs: {str(where)!r} disappeared ({was[0]})")
        else:
            problems.append(f"outside the base dirs: {str(where)!r} changed: {was} -> {is_}")
    return problems


# ------------------------------------------------------------------ finalization files


def finalization_problem(archive: str, timecode: str, instance: str,
                         names: list[str], where: str, supplements: int = 0) -> str | None:
    """The rule for finalization files of one (archive, timecode, instance): at most
    MAX_FINALIZATION_FILES plus the further files recorded for it; a message when it
    is broken."""
    if len(names) <= MAX_FINALIZATION_FILES + supplements:
        return None
    return (f"{len(names)} finalization files for archive {archive!r}, timecode {timecode}, "
            f"instance {instance!r} in {where}: {sorted(names)}")


def _final_files(folders: Iterable[tuple[str, Path]], archives: set[str] | None
                 ) -> dict[tuple[str, str, str], list[str]]:
    """(archive, finalized timecode, instance) -> paths of the finalization files in
    the (instance, folder) pairs given."""
    found: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for instance, folder in folders:
        try:
            names = sorted(os.listdir(folder))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for name in names:
            m = _FINAL_RE.match(name)
            if not m or not os.path.isfile(folder / name):
                continue
            archive, tc = m.group(2), m.group(3)
            if archives is not None and archive not in archives:
                continue
            found[(archive, tc, instance)].append(os.fspath(folder / name))
    return found


def _instance_dirs(tc_parent: Path, middle: tuple[str, ...], instances: set[str] | None
                   ) -> list[tuple[str, Path]]:
    """(instance, folder) for every <tc>/<middle...>/<instance>/ under tc_parent."""
    pairs = []
    try:
        tcs = sorted(os.listdir(tc_parent))
    except (FileNotFoundError, NotADirectoryError):
        return []
    for tc in tcs:
        base = tc_parent.joinpath(tc, *middle)
        if not base.is_dir() or base.is_symlink():
            continue
        for inst in sorted(os.listdir(base)):
            if instances is not None and inst not in instances:
                continue
            if (base / inst).is_dir():
                pairs.append((inst, base / inst))
    return pairs


def finalization_problems(destinations: Mapping[str, Path], file_root: Path | None,
                          instance_ids: Iterable[str] | None,
                          supplements: Mapping[tuple[str, str, str], int] | None = None
                          ) -> list[str]:
    """Violations of ``finalization_problem`` under file_root and in each destination.

    supplements: further files recorded per (archive, timecode, instance)."""
    instances = set(instance_ids) if instance_ids is not None else None
    extra = supplements or {}
    problems = []
    if file_root is not None:
        found = _final_files(_instance_dirs(Path(file_root), (), instances), None)
        for (archive, tc, inst), names in sorted(found.items()):
            if (p := finalization_problem(archive, tc, inst, names, f"{str(file_root)!r}",
                                          extra.get((archive, tc, inst), 0))):
                problems.append(p)
    for archive, base in sorted(destinations.items()):
        found = _final_files(_instance_dirs(Path(base), ("suprsync",), instances), {archive})
        for (arch, tc, inst), names in sorted(found.items()):
            if (p := finalization_problem(arch, tc, inst, names,
                                          f"destination {str(base)!r}",
                                          extra.get((arch, tc, inst), 0))):
                problems.append(p)
    return problems


# ------------------------------------------------------------------ the check


@dataclass
class Report:
    """What ``check_invariants`` looked at (so a test can show it checked something)."""

    rows: int = 0
    verified_checked: int = 0
    gone_checked: int = 0
    unknown_archive: int = 0
    problems: list[str] = field(default_factory=list)


def _row_problems(row: Row, destinations: Mapping[str, Path], absent_ok: set[str],
                  report: Report) -> list[str]:
    problems: list[str] = []
    archive = as_text(row.archive_name)
    base = destinations.get(archive) if archive is not None else None
    try:
        raw = row.remote_path
        if isinstance(raw, bytes):
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(f"remote path is not valid UTF-8: {raw!r}") from exc
        remote = normalize_remote_path(raw)
    except ValueError as exc:
        remote, bad_remote = None, str(exc)
    else:
        bad_remote = ""
    local = as_text(row.local_path)
    md5 = md5_text(row.local_md5sum)

    # 2. no false verification
    if row.verified:
        if base is None:
            if archive is None:
                problems.append(f"{row.describe()} reads verified but has no archive")
        elif remote is None:
            problems.append(f"{row.describe()} reads verified but its remote path does "
                            f"not normalize: {bad_remote}")
        else:
            report.verified_checked += 1
            got, why = destination_md5(Path(base), remote)
            if got is None:
                problems.append(f"{row.describe()} reads verified but {why}")
            elif got != md5:
                problems.append(f"{row.describe()} reads verified with md5 {show(md5)} but "
                                f"{str(Path(base) / remote)!r} holds md5 {got}")

    # 1. no data lost
    if base is None:
        report.unknown_archive += 1
    if (row.ignored or base is None or local is None or "\x00" in local
            or local in absent_ok):
        return problems
    if os.path.exists(local):
        return problems
    report.gone_checked += 1
    if remote is None:
        problems.append(f"LOST: local file of {row.describe()} is gone and its remote path "
                        f"does not normalize ({bad_remote})")
    elif md5 is None:
        problems.append(f"LOST: local file of {row.describe()} is gone and the row has no "
                        f"usable md5 ({show(row.local_md5sum)})")
    else:
        got, why = destination_md5(Path(base), remote)
        if got is None:
            problems.append(f"LOST: local file of {row.describe()} is gone and {why}")
        elif got != md5:
            problems.append(f"LOST: local file of {row.describe()} is gone and "
                            f"{str(Path(base) / remote)!r} holds md5 {got}, not {md5}")
    return problems


def check_invariants(db: str | os.PathLike[str], destinations: Mapping[str, str | os.PathLike],
                     *, file_root: str | os.PathLike[str] | None = None,
                     instance_ids: Iterable[str] | None = None,
                     fence: Fence | None = None,
                     local_roots: Iterable[str | os.PathLike[str]] = (),
                     absent_ok: Iterable[str | os.PathLike[str]] = ()) -> Report:
    """Assert the integrity invariants; return what was checked.

    db: an sqlite catalog path or an SQLAlchemy URL. destinations: archive name ->
    that archive's remote base dir on this host. file_root: the agents'
    ``--suprsync-file-root`` (for the finalization rule; their instances are all
    folders found there unless instance_ids names them). fence: a snapshot from
    ``snapshot_fence``; the destinations, local_roots, file_root and the catalog's
    files are excluded from its comparison. absent_ok: local paths the caller
    removed itself or never created, whose absence is no loss.
    """
    dests = {name: Path(p) for name, p in destinations.items()}
    gone_ok = {os.fsdecode(os.fspath(p)) for p in absent_ok}
    report = Report()
    rows = read_rows(db)
    report.rows = len(rows)
    problems: list[str] = []
    for row in rows:
        problems += _row_problems(row, dests, gone_ok, report)
    problems += finalization_problems(dests, Path(file_root) if file_root else None,
                                      instance_ids, read_supplements(db))
    # 5. no false completion: a finalized dir at an archive's destination holds every
    # file registered into it before its finalization file.
    for archive, base in dests.items():
        problems += _false_completions(
            archive, {r.id: r for r in rows if as_text(r.archive_name) == archive},
            {archive: base}, _normalized_remote, missing_only=True)
    if fence is not None:
        extra = [*dests.values(), *map(Path, local_roots)]
        if file_root is not None:
            extra.append(Path(file_root))
        if not is_url(db):
            extra += [Path(os.fspath(db) + s) for s in CATALOG_FILE_SUFFIXES]
        problems += fence_problems(fence, extra)
    report.problems = problems
    if problems:
        shown = problems[:_MAX_PROBLEMS]
        more = len(problems) - len(shown)
        raise AssertionError(
            f"{len(problems)} invariant violation(s) in catalog {os.fspath(db)!r}:\n  "
            + "\n  ".join(shown) + (f"\n  ... and {more} more" if more else ""))
    return report


# ------------------------------------------------------------------ further destinations

_COPIES_QUERY = (
    "SELECT d.archive_name, d.name, c.file_id, c.remote_md5sum, c.verified "
    "FROM suprsync_copies_v0 c JOIN suprsync_destinations_v0 d ON d.id = c.dest"
)


def _read_copies(db: str | os.PathLike[str]) -> list[tuple[Any, ...]]:
    """(archive, destination id, file id, md5 seen, verified) of every copy row."""
    if is_url(db):
        return _query_url(str(db), "suprsync_copies_v0", _COPIES_QUERY)
    conn = sqlite3.connect(os.fspath(db), timeout=60)
    try:
        try:
            return conn.execute(_COPIES_QUERY).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []
            raise
    finally:
        conn.close()


def _normalized_remote(row: Row) -> str | None:
    """The row's remote path as suprsync writes it, or None when it has none."""
    try:
        raw = as_text(row.remote_path)
        return normalize_remote_path(raw) if raw is not None else None
    except ValueError:
        return None


def _false_completions(archive: str, rows: Mapping[int, Row], bases: Mapping[str, Path],
                       where: Callable[[Row], str | None],
                       missing_only: bool = False) -> list[str]:
    """A finalization file at a destination whose dir lacks a file there: every row of
    the dir surely not ignored (outside ``<tc>/suprsync/``) registered before the
    finalization file must be at that destination with its md5 (``missing_only``: must
    be there at all; a later change of a file's content is then no false completion)."""
    by_remote = {r: row for row in rows.values() if (r := where(row)) is not None}
    in_dir: dict[str, list[tuple[str, Row]]] = defaultdict(list)
    for remote, row in by_remote.items():
        top, _, rest = remote.partition("/")
        if row.surely_kept and rest and not rest.startswith("suprsync/"):
            in_dir[top].append((remote, row))
    problems = []
    for name, base in bases.items():
        for instance, folder in _instance_dirs(base, ("suprsync",), None):
            for (_, tc, _), paths in _final_files([(instance, folder)], {archive}).items():
                for path in paths:
                    fin = by_remote.get(Path(path).relative_to(base).as_posix())
                    if fin is None:
                        continue
                    for remote, row in in_dir.get(tc, ()):
                        if row.id >= fin.id:
                            continue
                        md5 = md5_text(row.local_md5sum)
                        got = destination_md5(base, remote)[0]
                        if got is None if missing_only else got != md5:
                            problems.append(
                                f"FALSE COMPLETION: destination {name} holds {path} but not "
                                f"{row.describe()} of that dir")
    return problems


def check_every_destination(db: str | os.PathLike[str], archive: str,
                            primary: str | os.PathLike, further: Mapping[str, str | os.PathLike],
                            min_copies: int,
                            absent_ok: Iterable[str | os.PathLike[str]] = ()) -> int:
    """Assert the invariants of an archive's further destinations; the copy rows checked.

    further: destination id -> its base dir on this host. A copy that reads verified
    (its md5 seen equals the row's local md5) holds that md5 at its destination; a
    row whose local file is gone has at least ``min_copies`` destinations (``primary``
    among them) holding its md5. Rows are read as check_invariants reads them.
    """
    gone_ok = {os.fsdecode(os.fspath(p)) for p in absent_ok}
    bases = {name: Path(p) for name, p in further.items()}
    rows = {r.id: r for r in read_rows(db) if as_text(r.archive_name) == archive}
    problems = []

    checked = 0
    for arch, name, file_id, seen, verified in _read_copies(db):
        row = rows.get(file_id)
        if arch != archive or row is None or not verified or name not in bases:
            continue
        md5 = md5_text(row.local_md5sum)
        if seen is None or md5 is None or seen != md5:
            continue
        remote = _normalized_remote(row)
        checked += 1
        if remote is None:
            problems.append(f"{row.describe()} reads verified at destination {name} but its "
                            f"remote path does not normalize")
            continue
        got, why = destination_md5(bases[name], remote)
        if got != md5:
            problems.append(f"{row.describe()} reads verified at destination {name} but "
                            f"{why or f'it holds md5 {got}'}")
    for row in rows.values():
        local = as_text(row.local_path)
        md5 = md5_text(row.local_md5sum)
        remote = _normalized_remote(row)
        if (row.ignored or local is None or "\x00" in local or local in gone_ok
                or os.path.exists(local) or md5 is None or remote is None):
            continue
        holders = [name for name, base in [("primary", Path(primary)), *bases.items()]
                   if destination_md5(base, remote)[0] == md5]
        if len(holders) < min_copies:
            problems.append(f"LOST: local file of {row.describe()} is gone and only "
                            f"{holders or 'no destination'} hold md5 {md5} (at least "
                            f"{min_copies} should)")
    problems += _false_completions(archive, rows, bases, _normalized_remote)
    if problems:
        raise AssertionError(f"{len(problems)} further-destination invariant violation(s):\n  "
                             + "\n  ".join(problems[:_MAX_PROBLEMS]))
    return checked
