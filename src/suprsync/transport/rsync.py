"""What every rsync-based destination shares: argument lists, staging, reading the outcome."""

from __future__ import annotations

import abc
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Sequence

from ..blame import blames_the_place, describe
from ..procs import ProcGroup, ProcResult
from .base import (
    FileFailure,
    Outgoing,
    SendResult,
    SendStatus,
    StagingFailed,
    TransferOptions,
    Transport,
)
from .rsync_errors import destination_failure


def rsync_argv(options: TransferOptions, source_dir: str, destination: str,
               force: bool = False, remote_shell: str | None = None) -> list[str]:
    """Arguments for rsync reading NUL-separated relative paths on stdin.

    The source tree holds one symlink per file, named as on the remote; ``-L``
    sends the file it points to. rsync writes each file under a temporary name
    and renames it when complete, so no partial file has its final name.
    ``force`` re-sends files whose size and mtime look unchanged.
    """
    argv = [
        options.rsync,
        "--perms",
        "--times",
        "--copy-links",
        "--from0",
        "--files-from=-",
        "--no-inc-recursive",
        # New files have nothing to delta against: send them whole.
        "--whole-file",
    ]
    if options.chmod:
        argv.append(f"--chmod={options.chmod}")
    if options.compression:
        argv.append("--compress")
    if options.bwlimit:
        argv.append(f"--bwlimit={options.bwlimit}")
    if force:
        argv.append("--ignore-times")
    if remote_shell is not None:
        argv += ["--protect-args", "-e", remote_shell]
    argv += ["--", source_dir.rstrip("/") + "/", destination]
    return argv


def files_from(rel_paths: list[str]) -> bytes:
    """NUL-separated paths, as xargs -0 reads them."""
    return b"".join(p.encode("utf-8", "surrogateescape") + b"\0" for p in rel_paths)


def rsync_files_from(rel_paths: list[str]) -> bytes:
    """The --files-from list: paths prefixed with ./ (rsync skips lines starting # or ;)."""
    return files_from(["./" + p for p in rel_paths])


#: rsync exit codes that mean some files failed but the transfer as a whole ran.
PARTIAL_EXIT_CODES = (23, 24)

#: Staging dirs are named <prefix><pid>-<random> so that a dead run's can be found.
STAGING_PREFIX = "suprsync-stage-"

#: A quoted name in one of rsync's messages (rsync writes unprintable bytes as \#ooo).
_QUOTED = re.compile(r'^rsync:\s+(?:\[(?P<role>[A-Za-z]+)\]\s+)?[^"]*"(?P<name>.*)"\s+failed:'
                     r"\s*(?P<why>.*?)\s*(?:\(\d+\))?\s*$")


class RsyncTransport(Transport):
    """A destination written by rsync: the files are laid out, then one rsync call sends them.

    Each file is read in place when its local path ends with its remote path;
    the others are linked, under their remote names, into a private staging tree
    of symlinks that ``--copy-links`` follows. rsync's exit codes and messages
    become a SendResult here, and only here. Every rsync (and ssh) child runs in
    ``children``, so abort() stops them all.
    """

    def __init__(self, remote_basedir: str, options: TransferOptions) -> None:
        super().__init__(remote_basedir, options)
        self.children = ProcGroup()

    def stop_all(self) -> None:
        self.children.kill_all()

    @abc.abstractmethod
    def copy(self, source_dir: str, rel_paths: list[str], force: bool = False) -> ProcResult:
        """rsync these paths (relative to source_dir) to the base dir."""

    def send(self, files: Sequence[Outgoing], force: bool = False) -> SendResult:
        if self.aborted:
            return SendResult(SendStatus.ABORTED, reason="stopped by request")
        groups: dict[str, list[str]] = {}
        failed: dict[str, FileFailure] = {}
        staging: str | None = None
        made: set[str] = set()
        try:
            for local_path, rel in files:
                source = _source_root(local_path, rel)
                if source is None:
                    if staging is None:
                        staging = _make_staging_dir()
                    try:
                        _link(local_path, staging, rel, made)
                    except OSError as exc:
                        failed[rel] = FileFailure(f"cannot stage it: {describe(exc)}")
                        continue
                    source = staging
                groups.setdefault(source, []).append(rel)
            result = SendResult(SendStatus.OK, failed)
            for source, rels in groups.items():
                part = self._judge(self.copy(source, rels, force=force), source, rels)
                result.duration += part.duration
                if not part.ok:
                    part.duration = result.duration
                    return part
                failed.update(part.failed)
                result.warning = result.warning or part.warning
            return result
        finally:
            if staging is not None:
                # A tree of symlinks only: removing it need not delay the caller.
                threading.Thread(target=shutil.rmtree, args=(staging, True), daemon=True,
                                 name="unstage").start()

    def _judge(self, result: ProcResult, source: str, rels: list[str]) -> SendResult:
        """One rsync call as a SendResult: its exit code and messages, read."""
        duration = result.duration
        count = len(rels)
        if result.timed_out:
            return SendResult(SendStatus.TIMED_OUT, duration=duration,
                              reason=f"rsync of {count} files to {self.describe()} timed out "
                                     f"after {duration:.1f} s")
        if result.returncode == 0:
            return SendResult(SendStatus.OK, duration=duration)
        if self.children.aborted:
            return SendResult(SendStatus.ABORTED, duration=duration,
                              reason=f"rsync of {count} files to {self.describe()} stopped "
                                     "by request")
        blamed = destination_failure(result.stderr)
        if result.returncode not in PARTIAL_EXIT_CODES or blamed is not None:
            return SendResult(SendStatus.DESTINATION_FAILED, duration=duration,
                              reason=f"rsync to {self.describe()} failed (exit "
                                     f"{result.returncode}): {blamed or result.stderr_tail()}")
        return SendResult(SendStatus.OK, failed=failed_files(result.stderr, source, rels),
                          duration=duration,
                          warning=f"rsync to {self.describe()} could not send some files "
                                  f"(exit {result.returncode}): {result.stderr_tail()}")


def failed_files(stderr: bytes, source: str, rel_paths: list[str]) -> dict[str, FileFailure]:
    """The files rsync's messages name as not sent from ``source`` (sender-side errors).

    Files rsync failed without naming them as sent from here are found missing
    by verification instead.
    """
    by_path = {os.path.join(source, rel): rel for rel in rel_paths}
    failed: dict[str, FileFailure] = {}
    for line in stderr.decode("utf-8", "surrogateescape").split("\n"):
        match = _QUOTED.match(line)
        if match is None or match["role"] not in (None, "sender"):
            continue
        rel = by_path.get(_unescape_name(match["name"]))
        if rel is not None and rel not in failed:
            failed[rel] = FileFailure(f"rsync could not read it: {match['why']}")
    return failed


def _unescape_name(name: str) -> str:
    """A name as rsync printed it, with its \\#ooo escapes turned back into bytes."""
    raw = name.encode("utf-8", "surrogateescape")
    out = re.sub(rb"\\#([0-7]{3})", lambda m: bytes([int(m[1], 8)]), raw)
    return out.decode("utf-8", "surrogateescape")


def _source_root(local_path: str, rel: str) -> str | None:
    """The directory D with local_path == D/rel, when there is one."""
    if local_path.endswith("/" + rel):
        return local_path[:-len(rel) - 1] or "/"
    return None


def _make_staging_dir() -> str:
    try:
        return tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-")
    except OSError as exc:
        raise StagingFailed(f"cannot stage files in {tempfile.gettempdir()}: "
                            f"{describe(exc)}") from exc


def _link(local_path: str, staging: str, rel: str, made: set[str]) -> None:
    """Link local_path into the staging tree as rel; StagingFailed if the tree refuses."""
    link = os.path.join(staging, rel)
    folder = os.path.dirname(link)
    try:
        if folder not in made:
            os.makedirs(folder, exist_ok=True)
            made.add(folder)
        os.symlink(local_path, link)
    except OSError as exc:
        if blames_the_place(exc.errno):
            raise StagingFailed(f"cannot stage files in {staging}: {describe(exc)}") from exc
        raise
