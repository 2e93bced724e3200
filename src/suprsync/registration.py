"""Registering many local files at once (``suprsync add-local-files``)."""

from __future__ import annotations

import logging
import os
import stat
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TextIO

from .catalog.store import SupRsyncFilesManager, create_file
from .catalog.timecode import ensure_tcdir
from .hashing import md5_file
from .paths import timecode_of

log = logging.getLogger(__name__)

#: Rows inserted per transaction.
BATCH = 500


def find_new_files(root: str, known: set[str], last_edit: float,
                   now: float, exclude: set[str] | None = None) -> Iterator[str]:
    """Regular files under root, not in known, last modified at least last_edit s ago.

    Paths in ``exclude`` (the catalog's own files) and names that are not valid
    UTF-8 (the catalog cannot store them) are skipped with a warning.
    """
    exclude = exclude or set()
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(folder, name)
            if path in known or path in exclude:
                continue
            try:
                path.encode("utf-8")
            except UnicodeEncodeError:
                log.warning("skipping %r: its name is not valid UTF-8", path)
                continue
            try:
                st = os.stat(path)
            except OSError as exc:
                log.warning("skipping %s: %s", path, exc.strerror)
                continue
            if not stat.S_ISREG(st.st_mode):
                log.warning("skipping %s: not a regular file", path)
                continue
            if now - st.st_mtime >= last_edit:
                yield path


def _progress(out: TextIO, done: int, total: int) -> None:
    width = 30
    filled = int(width * done / total) if total else width
    out.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} files")
    out.flush()


def add_local_files(manager: SupRsyncFilesManager, root: str, archive_name: str,
                    last_edit: float = 60, dry: bool = False,
                    out: TextIO | None = None, workers: int | None = None) -> list[str]:
    """Register every file under root not yet known; remote path is relative to root.

    Files are hashed in parallel and inserted in batches. Returns the local paths
    added (or, when dry, that would be added).
    """
    root = os.path.abspath(root)
    known = manager.known_local_paths(archive_name)
    catalog = manager.sqlite_path()
    suffixes = ("", "-wal", "-shm", "-journal")
    exclude = {catalog + suffix for suffix in suffixes} if catalog else set()
    paths = list(find_new_files(root, known, last_edit, manager.clock(), exclude))
    if dry:
        if out is not None:
            for path in paths[:10]:
                out.write(f"{path} -> {os.path.relpath(path, root)}\n")
            if len(paths) > 10:
                out.write(f"... and {len(paths) - 10} more\n")
        return paths
    show = out is not None and out.isatty() and bool(paths)
    progress_out = sys.stderr if show else None
    added: list[str] = []
    workers = workers or min(8, (os.cpu_count() or 1) + 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(paths), BATCH):
            chunk = paths[start:start + BATCH]
            sums = list(pool.map(_md5_or_none, chunk))
            rows = []
            for path, md5 in zip(chunk, sums, strict=True):
                if md5 is None:
                    continue
                rows.append(create_file(path, os.path.relpath(path, root), archive_name,
                                        local_md5sum=md5, timestamp=manager.clock()))
            manager.write(lambda s, rows=rows: _insert(s, rows, archive_name),
                          what="register files")
            added += [r.local_path for r in rows]
            if progress_out is not None:
                _progress(progress_out, start + len(chunk), len(paths))
    if progress_out is not None:
        progress_out.write("\n")
    return added


def _md5_or_none(path: str) -> str | None:
    try:
        return md5_file(path)
    except OSError as exc:
        log.warning("skipping %s: %s", path, exc.strerror)
        return None


def _insert(session, rows, archive_name: str) -> None:  # type: ignore[no-untyped-def]
    session.add_all(rows)
    for timecode in {tc for r in rows if (tc := timecode_of(r.remote_path)) is not None}:
        ensure_tcdir(session, archive_name, timecode)
    session.flush()

