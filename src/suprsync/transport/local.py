"""A destination on this host (a local disk or a mounted network file system)."""

from __future__ import annotations

import os
import shlex
import stat
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from ..hashing import md5_file
from ..leftovers import remove_stale_dirs
from ..procs import ProcResult, Stream, run
from .base import (
    FIND_FILES,
    SORT_BYTEWISE,
    Access,
    Capabilities,
    RemoteStat,
    TransferOptions,
    TransportError,
    Warn,
    list_timeout,
    read_listing,
)
from .destination import Destination
from .registry import register
from .rsync import STAGING_PREFIX, RsyncTransport, rsync_argv, rsync_files_from

#: Files of at most this many bytes in all are hashed in the calling thread: for
#: them, starting threads costs more than it saves.
INLINE_HASH_BYTES = 8 << 20


def remove_stale_staging() -> int:
    """Remove the staging trees of runs that were killed."""
    return remove_stale_dirs(STAGING_PREFIX)


class LocalTransport(RsyncTransport):
    """rsync to a directory of this host; checksums computed here."""

    capabilities = Capabilities(hashes=frozenset({"md5"}), rereads=True, keeps_mtime=True,
                                remote_shell=False)

    def __init__(self, remote_basedir: str, options: TransferOptions) -> None:
        super().__init__(os.path.abspath(os.path.expanduser(remote_basedir)), options)

    def describe(self) -> str:
        return self.remote_basedir

    def prepare(self) -> None:
        try:
            os.makedirs(self.remote_basedir, exist_ok=True)
        except OSError as exc:
            raise TransportError(f"cannot create base dir {self.remote_basedir!r}: {exc}") from exc

    def copy(self, source_dir: str, rel_paths: list[str], force: bool = False) -> ProcResult:
        argv = rsync_argv(self.options, source_dir, self.remote_basedir + "/", force=force)
        return run(argv, input=rsync_files_from(rel_paths), timeout=self.options.copy_timeout,
                   group=self.children)

    def stat(self, rel_paths: list[str]) -> dict[str, RemoteStat]:
        found = {}
        for rel in rel_paths:
            try:
                st = os.lstat(os.path.join(self.remote_basedir, rel))
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            found[rel] = RemoteStat(st.st_size, int(st.st_mtime))
        return found

    def checksums(self, rel_paths: list[str], total_bytes: int = 0) -> dict[str, str]:
        def one(rel: str) -> tuple[str, str | None]:
            path = os.path.join(self.remote_basedir, rel)
            try:
                if not stat.S_ISREG(os.lstat(path).st_mode):
                    return rel, None  # a link or a directory holds no copy
                return rel, md5_file(path)
            except OSError:
                return rel, None

        if len(rel_paths) == 1 or 0 < total_bytes <= INLINE_HASH_BYTES:
            return {rel: md5 for rel, md5 in map(one, rel_paths) if md5 is not None}

        def some(rels: list[str]) -> list[tuple[str, str | None]]:
            return [one(rel) for rel in rels]

        # A few dozen tasks, not one per file (a Future each is a lot of memory for a
        # chunk of thousands of small files), still small enough to spread large files.
        workers = min(4, max(1, len(rel_paths)))
        size = max(1, -(-len(rel_paths) // (workers * 8)))
        parts = [rel_paths[i:i + size] for i in range(0, len(rel_paths), size)]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return {rel: md5 for part in pool.map(some, parts) for rel, md5 in part
                    if md5 is not None}

    def list_files(self, expected_files: int = 0,
                   on_warning: Warn | None = None) -> Iterator[str]:
        # A fixed pipeline, run in the base dir: no name ever appears in the script.
        script = " ".join(map(shlex.quote, FIND_FILES)) + " | " + \
            " ".join(map(shlex.quote, SORT_BYTEWISE))
        try:
            stream = Stream(["sh", "-c", script], cwd=self.remote_basedir,
                            timeout=list_timeout(self.options.cmd_timeout, expected_files),
                            group=self.children)
        except OSError as exc:
            raise TransportError(f"cannot list {self.remote_basedir!r}: "
                                 f"{exc.strerror or exc}") from exc
        return read_listing(stream, self.remote_basedir, on_warning)


@register("file", remove_leftovers=remove_stale_staging)
def open_local(destination: Destination, options: TransferOptions,
               access: Access) -> LocalTransport:
    """A directory of this host (``access`` does not apply)."""
    return LocalTransport(destination.path, options)
