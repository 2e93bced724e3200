"""Registering many local files at once (``suprsync add-local-files``).

A :class:`~suprsync.treescan.TreeScan` lists the tree and hashes the files not
yet in the catalog; their rows are inserted in large batches, one batch while
the next files are hashed. Registering a whole tree so costs about what
``find | xargs md5sum`` costs.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TextIO

from sqlalchemy import insert
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from .catalog.schema import SupRsyncFile
from .catalog.settings import CATALOG_FILE_SUFFIXES
from .catalog.store import SupRsyncFilesManager
from .catalog.timecode import ensure_tcdir
from .paths import timecode_of
from .progress import Bar
from .treescan import SKIP_UNREADABLE, TreeScan

log = logging.getLogger(__name__)

#: Rows inserted per transaction.
BATCH = 10_000

# The new files of a batch, as one JSON object {local path: md5}: one statement per
# batch, so SQLite appends to each index in order. The remote path is the local
# path without the root and its slash (substr counts characters, from 1).
_INSERT_FROM_JSON = (
    f"INSERT INTO {SupRsyncFile.__tablename__} (local_path, local_md5sum, archive_name, "
    "remote_path, timestamp, failed_copy_attempts, deletable, ignore) "
    "SELECT key, value, ?, substr(key, ?), ?, 0, 1, 0 FROM json_each(?)")

#: {local path: md5} of the files of one batch, in walk order.
Batch = dict[str, str]


def catalog_files(manager: SupRsyncFilesManager) -> set[str]:
    """The catalog's own files (sqlite file, WAL, shared memory, journal), never registered."""
    catalog = manager.sqlite_path()
    return {catalog + sfx for sfx in CATALOG_FILE_SUFFIXES} if catalog else set()


def add_local_files(manager: SupRsyncFilesManager, root: str, archive_name: str,
                    last_edit: float = 60, dry: bool = False,
                    out: TextIO | None = None, workers: int | None = None,
                    scan: TreeScan | None = None,
                    skipped: Counter[str] | None = None) -> list[str]:
    """Register every file under root not yet known; remote path is relative to root.

    ``scan``: a TreeScan of root already started by the caller (it is closed
    here). Returns the local paths added (or, when dry, that would be added);
    ``skipped`` gets the number of files left out, by reason (treescan's SKIP_*).
    """
    root = os.path.abspath(root)
    if scan is None:
        scan = TreeScan(root, manager.clock() - last_edit,
                        lambda: manager.known_local_paths(archive_name),
                        exclude=catalog_files(manager), hashing=not dry, workers=workers)
    # Only for a person watching: never with --json (out is None) nor off a terminal.
    bar = Bar("listing", unit="files", enabled=out is not None)
    with scan, bar:
        bar.phase(f"listing {root}")
        paths = scan.paths()
        if skipped is not None:
            skipped.update(scan.skipped)
        if dry:
            if out is not None:
                for path in paths[:10]:
                    out.write(f"{path} -> {os.path.relpath(path, root)}\n")
                if len(paths) > 10:
                    out.write(f"... and {len(paths) - 10} more\n")
            return paths
        bar.phase("hashing and registering", total=len(paths))
        added = _register(manager, scan, archive_name, bar)
    if skipped is not None and len(added) < len(paths):
        skipped[SKIP_UNREADABLE] += len(paths) - len(added)  # md5sum could not read them
    return added


def _register(manager: SupRsyncFilesManager, scan: TreeScan, archive_name: str,
              bar: Bar) -> list[str]:
    """Insert the hashed files of scan; one batch is inserted while the next is hashed."""
    added: list[str] = []
    now = manager.clock()
    with ThreadPoolExecutor(1, thread_name_prefix="insert") as inserting:
        inserted: Future | None = None
        prefix = len(os.path.join(scan.root, ""))
        for batch in _batches(_counted(scan.hashed(), bar)):
            if inserted is not None:
                inserted.result()
            inserted = inserting.submit(
                manager.write,
                lambda s, batch=batch: _insert(s, batch, prefix, archive_name, now),
                "register files")
            added += batch
        if inserted is not None:
            inserted.result()
    return added


def _counted(hashed: Iterable[tuple[list[str], dict[str, str]]],
             bar: Bar) -> Iterator[tuple[list[str], dict[str, str]]]:
    """The hash chunks, counted on the progress bar as they arrive."""
    done = 0
    for chunk, sums in hashed:
        done += len(chunk)
        bar.update(done)
        yield chunk, sums


def _batches(hashed: Iterable[tuple[list[str], dict[str, str]]]) -> Iterator[Batch]:
    """The hashed files, BATCH at a time (unreadable ones left out)."""
    batch: Batch = {}
    for chunk, sums in hashed:
        batch.update((path, md5) for path in chunk if (md5 := sums.get(path)) is not None)
        if len(batch) >= BATCH:
            yield batch
            batch = {}
    if batch:
        yield batch


def _insert(session: Session, batch: Batch, prefix: int, archive_name: str,
            now: float) -> None:
    """Insert the rows of batch; the remote path is the local path from index prefix on."""
    if _has_json_functions(session):
        session.connection().exec_driver_sql(
            _INSERT_FROM_JSON, (archive_name, prefix + 1, now, json.dumps(batch)))
    else:
        session.execute(insert(SupRsyncFile.__table__), [
            {"local_path": local, "local_md5sum": md5, "archive_name": archive_name,
             "remote_path": local[prefix:], "timestamp": now, "failed_copy_attempts": 0,
             "deletable": True, "ignore": False} for local, md5 in batch.items()])
    # Paths come from listing the root: below it, no '..', no empty parts.
    firsts = {local[prefix:].partition("/")[0] + "/" for local in batch}
    for timecode in {tc for first in firsts if (tc := timecode_of(first)) is not None}:
        ensure_tcdir(session, archive_name, timecode)
    session.flush()


def _has_json_functions(session: Session) -> bool:
    """True for an SQLite catalog whose library has json_each (built in since 3.38)."""
    if session.get_bind().dialect.name != "sqlite":
        return False
    try:
        session.connection().exec_driver_sql("SELECT json_valid('[]')")
    except OperationalError as exc:
        log.debug("no JSON functions in this SQLite (%s): inserting row by row", exc.orig)
        return False
    return True

