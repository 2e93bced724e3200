"""Removing the directories that deleting local files left empty.

A directory is removed only when it is empty (``rmdir`` refuses anything
else), strictly inside the local root, and untouched for an hour by anything
but suprsync's own deletions: its modification time must be the one suprsync's
last deletion in it left, and the one before suprsync's deletions at least an
hour old. Its parents follow under the same rule.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

#: Seconds a directory must have been left alone by others before it is removed.
QUIET = 3600.0


class EmptyDirs:
    """Directories in which local files were deleted, until they can be removed.

    ``clock`` is compared with file-system times, so it is the wall clock.
    """

    def __init__(self, local_root: str, quiet: float = QUIET,
                 clock: Callable[[], float] = time.time) -> None:
        self.root = os.path.abspath(local_root)
        self.quiet = quiet
        self.clock = clock
        #: dir -> (mtime before suprsync's deletions, mtime after its last one), in ns
        self.pending: dict[str, tuple[int, int]] = {}

    def inside(self, folder: str) -> bool:
        """True for a directory strictly below the local root."""
        folder = os.path.abspath(folder)
        return folder != self.root and folder.startswith(self.root.rstrip("/") + "/")

    def _mtime(self, folder: str) -> int | None:
        try:
            st = os.lstat(folder)
        except OSError:
            return None
        return st.st_mtime_ns if stat.S_ISDIR(st.st_mode) else None

    def before(self, folder: str) -> int | None:
        """Call before suprsync changes folder: the time others last changed it."""
        now = self._mtime(folder)
        known = self.pending.get(folder)
        if known is not None and known[1] == now:
            return known[0]
        return now

    def after(self, folder: str, before: int | None) -> None:
        """Call after suprsync deleted something in folder."""
        if before is None or not self.inside(folder):
            return
        now = self._mtime(folder)
        if now is not None:
            self.pending[folder] = (before, now)

    def sweep(self) -> list[str]:
        """Remove the pending directories that may go (and their emptied parents)."""
        removed: list[str] = []
        work = sorted(self.pending, key=len, reverse=True)
        while work:
            folder = work.pop(0)
            entry = self.pending.get(folder)
            if entry is None:
                continue
            before, after = entry
            now = self._mtime(folder)
            if now is None:
                del self.pending[folder]
                continue
            if now != after:
                self.pending[folder] = (now, now)  # changed by someone else just now
                continue
            if self.clock() - before / 1e9 < self.quiet:
                continue
            parent = os.path.dirname(folder)
            parent_before = self.before(parent) if self.inside(parent) else None
            try:
                os.rmdir(folder)
            except OSError as exc:
                del self.pending[folder]
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    log.warning("cannot remove empty directory %s: %s", folder, exc.strerror)
                continue
            del self.pending[folder]
            removed.append(folder)
            log.info("removed directory %s: empty after its files were deleted", folder)
            if parent_before is not None:
                self.after(parent, parent_before)
                work.insert(0, parent)
        return removed
