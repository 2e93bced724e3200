"""Free space of the file systems that hold an archive's local files."""

from __future__ import annotations

import logging
import os

from .retention import MinFree, Space

log = logging.getLogger(__name__)


def mount_point(path: str) -> str:
    """The top directory of the file system holding path (path itself when it cannot tell)."""
    path = os.path.abspath(path)
    try:
        dev = os.stat(path).st_dev
        while path != "/":
            parent = os.path.dirname(path)
            if os.stat(parent).st_dev != dev:
                break
            path = parent
    except OSError:
        pass
    return path


class DiskWatch:
    """Remembers each file system a local file was seen on, and measures them."""

    def __init__(self, min_free: MinFree | None = None) -> None:
        self.min_free = min_free
        #: device -> its mount point
        self.filesystems: dict[int, str] = {}
        self._dirs: dict[str, int | None] = {}

    def device(self, local_path: str) -> int | None:
        """The device of the directory of a local file (remembered), or None."""
        folder = os.path.dirname(local_path) if isinstance(local_path, str) else None
        if not folder:
            return None
        if folder not in self._dirs:
            try:
                dev: int | None = os.stat(folder).st_dev
            except OSError:
                dev = None
            if len(self._dirs) > 100_000:
                self._dirs.clear()
            self._dirs[folder] = dev
            if dev is not None and dev not in self.filesystems:
                self.filesystems[dev] = mount_point(folder)
        return self._dirs[folder]

    def note(self, local_path: str, dev: int | None = None) -> None:
        """Remember the file system of a local file (its device when known)."""
        if dev is not None and dev not in self.filesystems:
            self.filesystems[dev] = mount_point(os.path.dirname(local_path))
        elif dev is None:
            self.device(local_path)

    def measure(self) -> dict[int, Space]:
        """Free, total and wanted bytes of every file system seen so far."""
        out: dict[int, Space] = {}
        # A copy: the metrics server measures from its own thread.
        for dev, top in sorted(dict(self.filesystems).items(), key=lambda kv: kv[1]):
            try:
                st = os.statvfs(top)
            except OSError as exc:
                log.warning("cannot measure the free space of %s: %s", top, exc.strerror)
                continue
            total = st.f_blocks * st.f_frsize
            wanted = self.min_free.threshold(total) if self.min_free is not None else 0
            out[dev] = Space(top, st.f_bavail * st.f_frsize, total, wanted)
        return out

    def short(self) -> dict[int, int]:
        """Bytes to free per file system below --min-free (none without it)."""
        if self.min_free is None:
            return {}
        return {dev: s.short for dev, s in self.measure().items() if s.short > 0}
