"""Listing a directory tree and hashing its new files, in the background.

Loads without SQLAlchemy, so that ``suprsync add-local-files`` can start
listing and hashing while the catalog code is still being imported.

The tree is listed by one GNU ``find`` (a Python walk where it is missing),
paths already registered are dropped with a set lookup, and the rest are hashed
by several ``md5sum`` processes at once (hashlib where md5sum is missing).
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from . import procs
from .hashing import md5_file
from .transport.ssh import parse_md5sum

log = logging.getLogger(__name__)

#: Most files one md5sum process is given.
HASH_CHUNK_FILES = 2500
#: Most bytes of names on one md5sum command line.
HASH_CHUNK_NAME_BYTES = 120_000

#: Reasons a file under the root is not registered (keys of TreeScan.skipped).
SKIP_RECENT = "modified_recently"
SKIP_KNOWN = "already_registered"
SKIP_UNREADABLE = "unreadable"
SKIP_NOT_UTF8 = "name_not_utf8"
SKIP_NOT_REGULAR = "not_a_regular_file"
SKIP_CATALOG = "catalog_file"


def list_tree(root: str, cutoff: float, skips: Counter[str] | None = None) -> list[str]:
    """Regular files under root last modified at or before cutoff, in path order.

    Symlinks are not followed: suprsync sends only the regular file a row names,
    so a link is skipped with a warning, like other entries that are not regular
    files, unreadable directories and names that are not valid UTF-8 (the
    catalog cannot store them). ``skips`` counts what was left out, by reason
    (the SKIP_* names).
    """
    skips = Counter() if skips is None else skips
    listing = _list_with_find(root, cutoff, skips)
    if listing is None:
        skips.clear()
        listing = _list_with_python(root, cutoff, skips)
    listing.sort()
    return listing


def _list_with_find(root: str, cutoff: float,
                    skips: Counter[str] | None = None) -> list[str] | None:
    """The listing by GNU find, or None when find is missing or cannot make it.

    find prints the path of each old enough regular file, and every other entry
    that is not a directory as an empty record followed by its type, its
    target's type and its path; those (symlinks, mostly) are checked here. A
    regular file modified after cutoff is such a record of type R.
    """
    skips = Counter() if skips is None else skips
    find = shutil.which("find")
    if find is None:
        return None
    argv = [find, "-H", root, "-mindepth", "1",
            "(", "-type", "f", "!", "-newermt", f"@{cutoff:.9f}", "-printf", "%p\\0", ")",
            "-o", "(", "-type", "f", "-printf", "\\0R %p\\0", ")",
            "-o", "(", "!", "-type", "f", "!", "-type", "d", "-printf", "\\0%y%Y %p\\0", ")"]
    try:
        returncode, stdout, stderr = _run_to_files(argv)
    except OSError:
        return None
    if returncode != 0 and not stdout:
        return None  # not GNU find, or root unreadable: the Python walk says why
    for line in stderr.decode("utf-8", "replace").splitlines():
        log.warning("skipping: %s", line)
        skips[SKIP_UNREADABLE] += 1
    data = stdout[:-1]  # every record ends with a NUL
    if not data:
        return []
    try:
        records = data.decode("utf-8").split("\0")
    except UnicodeDecodeError:
        records = [_decoded(raw, skips) for raw in data.split(b"\0")]
    if "" not in records and None not in records:
        return records  # regular files only: the common case, at C speed
    listing: list[str] = []
    other = False
    for record in records:
        if record == "":
            other = True
        elif other:
            other = False
            if record is not None:
                _check_other(record, skips)
        elif record is not None:
            listing.append(record)
    return listing


def _run_to_files(argv: list[str]) -> tuple[int, bytes, bytes]:
    """Run argv with its output in temporary files: (exit status, stdout, stderr).

    Files, not pipes: reading a pipe takes the GIL for every few KiB, and while
    other threads hold it (importing, say) the writer waits.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        returncode = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    check=False).returncode
        out.seek(0)
        err.seek(0)
        return returncode, out.read(), err.read()


def _decoded(raw: bytes, skips: Counter[str]) -> str | None:
    """A find record as text, or None (with a warning) when its name is not UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        log.warning("skipping %r: its name is not valid UTF-8", os.fsdecode(raw))
        skips[SKIP_NOT_UTF8] += 1
        return None


def _check_other(record: str, skips: Counter[str]) -> None:
    """Count a file too recent ('R ' + path); warn about one that is not a regular file
    ('l' + target type + ' ' + path)."""
    kinds, _, path = record.partition(" ")
    if kinds == "R":
        skips[SKIP_RECENT] += 1
        return
    skips[SKIP_NOT_REGULAR] += 1
    if kinds[:1] == "l":
        log.warning("skipping %s: a symbolic link (only regular files are sent)", path)
    else:
        log.warning("skipping %s: not a regular file", path)


def _list_with_python(root: str, cutoff: float,
                      skips: Counter[str] | None = None) -> list[str]:
    skips = Counter() if skips is None else skips
    listing: list[str] = []
    for entry in _walk(root, skips):
        try:
            path = os.fsencode(entry.path).decode("utf-8")
        except UnicodeDecodeError:
            log.warning("skipping %r: its name is not valid UTF-8", entry.path)
            skips[SKIP_NOT_UTF8] += 1
            continue
        try:
            if entry.is_file(follow_symlinks=False):
                if entry.stat(follow_symlinks=False).st_mtime <= cutoff:
                    listing.append(path)
                else:
                    skips[SKIP_RECENT] += 1
                continue
        except OSError as exc:
            log.warning("skipping %s: %s", path, exc.strerror)
            skips[SKIP_UNREADABLE] += 1
            continue
        _add_if_regular(listing, path, cutoff, skips)
    return listing


def _walk(root: str, skips: Counter[str]) -> Iterator[os.DirEntry]:
    """Every entry below root that is not a directory (symlinks to dirs included)."""
    try:
        entries = list(os.scandir(root))
    except OSError as exc:
        log.warning("skipping %s: %s", root, exc.strerror)
        skips[SKIP_UNREADABLE] += 1
        return
    for entry in entries:
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
        except OSError:
            is_dir = False
        if is_dir:
            yield from _walk(entry.path, skips)
        else:
            yield entry


def _add_if_regular(listing: list[str], path: str, cutoff: float,
                    skips: Counter[str]) -> None:
    """Append path if it is a regular file old enough; warn if not (links included)."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        log.warning("skipping %s: %s", path, exc.strerror)
        skips[SKIP_UNREADABLE] += 1
        return
    if stat.S_ISLNK(st.st_mode):
        log.warning("skipping %s: a symbolic link (only regular files are sent)", path)
        skips[SKIP_NOT_REGULAR] += 1
    elif not stat.S_ISREG(st.st_mode):
        log.warning("skipping %s: not a regular file", path)
        skips[SKIP_NOT_REGULAR] += 1
    elif st.st_mtime <= cutoff:
        listing.append(path)
    else:
        skips[SKIP_RECENT] += 1


def hash_chunks(paths: list[str], workers: int) -> list[list[str]]:
    """paths in consecutive chunks, one md5sum process each.

    Chunks are bounded in files and in length of names, and there are at least
    four per worker, so that a handful of large files still spread out.
    """
    most_files = max(1, min(HASH_CHUNK_FILES, -(-len(paths) // (workers * 4))))
    chunks: list[list[str]] = []
    chunk: list[str] = []
    names = 0
    for path in paths:
        if chunk and (len(chunk) == most_files or names + len(path) > HASH_CHUNK_NAME_BYTES):
            chunks.append(chunk)
            chunk, names = [], 0
        chunk.append(path)
        names += len(path) + 1
    if chunk:
        chunks.append(chunk)
    return chunks


class TreeScan:
    """Lists a tree, drops known paths, and hashes the others, in background threads.

    ``known`` is called once the tree is listed, in the background thread; its
    paths are not hashed. Call :meth:`close` when done: it stops the hashing.
    """

    def __init__(self, root: str, cutoff: float, known: Callable[[], set[str]],
                 exclude: Collection[str] = (), hashing: bool = True,
                 workers: int | None = None) -> None:
        self.root = os.path.abspath(root)
        self.cutoff = cutoff
        self._known = known
        self._exclude = frozenset(exclude)
        self._hashing = hashing
        self._workers = max(1, workers or os.cpu_count() or 1)
        self._md5sum = shutil.which("md5sum")
        self._group = procs.ProcGroup()
        self._stopped = threading.Event()
        self._lister = ThreadPoolExecutor(1, thread_name_prefix="list")
        self._hashers = ThreadPoolExecutor(self._workers, thread_name_prefix="md5")
        self._selected: Future[list[tuple[list[str], Future[dict[str, str]]]]] | None = None
        self._paths: list[str] = []
        #: What the listing left out, by reason (SKIP_* names); complete after paths().
        self.skipped: Counter[str] = Counter()

    def start(self) -> TreeScan:
        """Begin listing (and hashing) in the background."""
        self._selected = self._lister.submit(self._select)
        return self

    def _select(self) -> list[tuple[list[str], Future[dict[str, str]]]]:
        listing = list_tree(self.root, self.cutoff, self.skipped)
        known = self._known()
        self._paths = [path for path in listing
                       if path not in known and path not in self._exclude]
        excluded = sum(path in self._exclude for path in listing)
        self.skipped[SKIP_CATALOG] += excluded
        self.skipped[SKIP_KNOWN] += len(listing) - len(self._paths) - excluded
        if not self._hashing:
            return []
        return [(chunk, self._hashers.submit(self._hash, chunk))
                for chunk in hash_chunks(self._paths, self._workers)]

    def paths(self) -> list[str]:
        """The new paths, in path order (waits for the listing)."""
        if self._selected is None:
            self.start()
        assert self._selected is not None
        self._selected.result()
        return self._paths

    def hashed(self) -> Iterator[tuple[list[str], dict[str, str]]]:
        """(chunk of new paths, md5 of each readable one), chunk after chunk in path order.

        Unreadable files are left out of the sums, with a warning.
        """
        self.paths()
        assert self._selected is not None
        for chunk, sums in self._selected.result():
            yield chunk, sums.result()

    def _hash(self, chunk: list[str]) -> dict[str, str]:
        if self._stopped.is_set():
            return {}
        if self._md5sum is None:
            return _hash_with_hashlib(chunk)
        try:
            sums = self._run_md5sum(chunk)
        except OSError as exc:  # no room for the output files, say
            log.warning("md5sum could not run (%s): hashing %d files in Python", exc, len(chunk))
            return _hash_with_hashlib(chunk)
        return sums

    def _run_md5sum(self, chunk: list[str]) -> dict[str, str]:
        assert self._md5sum is not None
        # Output goes to files, not pipes: md5sum writes line by line, and reading a
        # pipe would wake this process once per file.
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = subprocess.Popen([self._md5sum, "--", *chunk], stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=err, start_new_session=True)
            self._group.add(proc)
            try:
                proc.wait()
            finally:
                self._group.discard(proc)
            out.seek(0)
            err.seek(0)
            for line in err.read().decode("utf-8", "replace").splitlines():
                log.warning("skipping: %s", line)
            sums = parse_md5sum(out.read())
        if proc.returncode not in (0, 1) and not self._stopped.is_set():
            # 1 is md5sum's own "some files failed", warned about line by line above.
            log.warning("md5sum ended with status %s: %d of %d files from %s on are not "
                        "registered this time", proc.returncode, len(chunk) - len(sums),
                        len(chunk), chunk[0])
        return sums

    def close(self) -> None:
        """Stop hashing (killing running md5sum processes) and wait for the threads."""
        self._stopped.set()
        self._group.kill_all()
        self._lister.shutdown(wait=True)
        self._hashers.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> TreeScan:
        return self.start() if self._selected is None else self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _hash_with_hashlib(chunk: list[str]) -> dict[str, str]:
    sums = {}
    for path in chunk:
        try:
            sums[path] = md5_file(path)
        except OSError as exc:
            log.warning("skipping %s: %s", path, exc.strerror)
    return sums
