"""Registering many local files at once (``suprsync add-local-files``).

Files are found with one walk (set lookups against the paths already known),
hashed in parallel by the system's md5sum (hashlib where it is missing), and
inserted in large batches, so that registering a whole tree costs about what
``find | xargs md5sum`` costs.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TextIO

from sqlalchemy import insert
from sqlalchemy.orm import Session

from .catalog.schema import SupRsyncFile
from .catalog.store import SupRsyncFilesManager
from .catalog.timecode import ensure_tcdir
from .hashing import md5_file
from .paths import timecode_of
from .transport.ssh import parse_md5sum

log = logging.getLogger(__name__)

#: Files hashed and inserted per round (one transaction each).
BATCH = 10_000


def _walk(root: str) -> Iterator[os.DirEntry]:
    """Every entry below root that is not a directory, in sorted order."""
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as exc:
        log.warning("skipping %s: %s", root, exc.strerror)
        return
    for entry in entries:
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
        except OSError:
            is_dir = False
        if is_dir:
            yield from _walk(entry.path)
        else:
            yield entry


def find_new_files(root: str, known: set[str], last_edit: float,
                   now: float, exclude: set[str] | None = None) -> Iterator[str]:
    """Regular files under root, not in known, last modified at least last_edit s ago.

    Paths in ``exclude`` (the catalog's own files) and names that are not valid
    UTF-8 (the catalog cannot store them) are skipped with a warning.
    """
    exclude = exclude or set()
    for entry in _walk(root):
        path = entry.path
        if path in known or path in exclude:
            continue
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:
            log.warning("skipping %r: its name is not valid UTF-8", path)
            continue
        try:
            st = entry.stat()  # follows a symlink to what it names
        except OSError as exc:
            log.warning("skipping %s: %s", path, exc.strerror)
            continue
        if not stat.S_ISREG(st.st_mode):
            log.warning("skipping %s: not a regular file", path)
            continue
        if now - st.st_mtime >= last_edit:
            yield path


def hash_files(paths: list[str], workers: int) -> dict[str, str]:
    """md5 of each readable path (unreadable ones are left out, with a warning)."""
    if not paths:
        return {}
    md5sum = shutil.which("md5sum")
    if md5sum is None:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return {p: m for p, m in zip(paths, pool.map(_md5_or_none, paths), strict=True)
                    if m is not None}
    names = b"".join(os.fsencode(p) + b"\0" for p in paths)
    per_process = max(1, -(-len(paths) // workers))  # one md5sum per worker
    result = subprocess.run(
        ["xargs", "-0", "-r", "-P", str(workers), "-n", str(per_process), md5sum, "--"],
        input=names, capture_output=True, check=False)
    sums = parse_md5sum(result.stdout)
    for line in result.stderr.decode("utf-8", "replace").splitlines():
        log.warning("skipping: %s", line)
    return sums


def _md5_or_none(path: str) -> str | None:
    try:
        return md5_file(path)
    except OSError as exc:
        log.warning("skipping %s: %s", path, exc.strerror)
        return None


def _progress(out: TextIO, done: int, total: int) -> None:
    width = 30
    filled = int(width * done / total) if total else width
    out.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} files")
    out.flush()


def add_local_files(manager: SupRsyncFilesManager, root: str, archive_name: str,
                    last_edit: float = 60, dry: bool = False,
                    out: TextIO | None = None, workers: int | None = None) -> list[str]:
    """Register every file under root not yet known; remote path is relative to root.

    Returns the local paths added (or, when dry, that would be added).
    """
    root = os.path.abspath(root)
    known = manager.known_local_paths(archive_name)
    catalog = manager.sqlite_path()
    suffixes = ("", "-wal", "-shm", "-journal")
    exclude = {catalog + suffix for suffix in suffixes} if catalog else set()
    found = find_new_files(root, known, last_edit, manager.clock(), exclude)
    if dry:
        paths = list(found)
        if out is not None:
            for path in paths[:10]:
                out.write(f"{path} -> {os.path.relpath(path, root)}\n")
            if len(paths) > 10:
                out.write(f"... and {len(paths) - 10} more\n")
        return paths
    progress_out = sys.stderr if out is not None and out.isatty() else None
    workers = workers or max(1, os.cpu_count() or 1)
    added: list[str] = []
    # Three stages overlap: md5sum processes hash chunks while the walk goes on,
    # and sqlite inserts one chunk while the next is turned into rows.
    with ThreadPoolExecutor(1, thread_name_prefix="hash") as hashing, \
            ThreadPoolExecutor(1, thread_name_prefix="insert") as inserting:
        chunks: list[tuple[list[str], Future]] = []
        for chunk in _batched(found, BATCH):
            chunks.append((chunk, hashing.submit(hash_files, chunk, workers)))
        total = sum(len(chunk) for chunk, _ in chunks)
        inserted: Future | None = None
        done = 0
        for chunk, hashed in chunks:
            rows = _rows(chunk, hashed.result(), root, archive_name, manager.clock())
            if inserted is not None:
                inserted.result()
            inserted = inserting.submit(
                manager.write, lambda s, rows=rows: _insert(s, rows, archive_name),
                "register files")
            added += [r["local_path"] for r in rows]
            done += len(chunk)
            if progress_out is not None:
                _progress(progress_out, done, total)
        if inserted is not None:
            inserted.result()
    if progress_out is not None and added:
        progress_out.write("\n")
    return added


def _batched(items: Iterator[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _rows(chunk: list[str], sums: dict[str, str], root: str, archive_name: str,
          now: float) -> list[dict]:
    """Catalog rows of the hashed files of a chunk (unreadable ones are left out)."""
    prefix = len(root) + 1
    # Paths come from walking root: below it, no '..', no empty parts.
    return [{"local_path": path, "local_md5sum": md5, "archive_name": archive_name,
             "remote_path": path[prefix:], "timestamp": now, "failed_copy_attempts": 0,
             "deletable": True, "ignore": False}
            for path in chunk if (md5 := sums.get(path)) is not None]


def _insert(session: Session, rows: list[dict], archive_name: str) -> None:
    if rows and session.get_bind().dialect.name == "sqlite":
        columns = list(rows[0])
        sql = (f"INSERT INTO {SupRsyncFile.__tablename__} ({', '.join(columns)}) "
               f"VALUES ({', '.join('?' for _ in columns)})")
        session.connection().exec_driver_sql(sql, [tuple(r.values()) for r in rows])
    elif rows:
        session.execute(insert(SupRsyncFile.__table__), rows)
    firsts = {r["remote_path"].partition("/")[0] + "/" for r in rows}
    for timecode in {tc for first in firsts if (tc := timecode_of(first)) is not None}:
        ensure_tcdir(session, archive_name, timecode)
    session.flush()
