"""Questions about a destination answered by rsync itself: no other program runs there.

Every operation is one rsync session against the far side; file names travel only
in the NUL-separated ``--files-from`` list, never on a command line:

- checksums: a dry-run *pull* with ``--checksum --checksum-choice=md5`` into an
  empty local dir. The far side is rsync's sender, which reads each stored file to
  put its whole-file md5 in the file list; ``%C`` prints it, with ``%l`` (size) and
  ``%M`` (mtime) beside it. A missing name makes rsync exit 23 and prints nothing.
- stat: the same dry-run pull without ``--checksum`` (nothing is read, only listed).
- list_files: a recursive dry-run pull of the whole base dir, names sorted here.
- prepare: an empty dir sent with ``--mkpath``, which creates the base dir.

rsync prints an unprintable byte of a name as ``\\#ooo`` (octal), and a backslash
that would read as such an escape as ``\\#134``; ``decode_name`` undoes both.
"""

from __future__ import annotations

import calendar
import contextlib
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator

from ..leftovers import remove_stale_dirs
from ..procs import ProcGroup, ProcResult, Stream, run
from .base import (
    Capabilities,
    RemoteStat,
    TransferOptions,
    TransportError,
    Warn,
    last_line,
    list_timeout,
    read_listing,
    scaled_timeout,
)
from .rsync import PARTIAL_EXIT_CODES, rsync_argv, rsync_files_from

#: Every kind built on this module: md5 of the stored bytes, read by the far side's rsync.
RSYNC_PROTOCOL_CAPABILITIES = Capabilities(hashes=frozenset({"md5"}), rereads=True,
                                           keeps_mtime=True, remote_shell=False)

#: Private work dirs (empty targets, name lists) are named ``<prefix><pid>-<random>``.
WORK_PREFIX = "suprsync-rsyncproto-"

#: ``%i`` (itemized change), ``%l`` (size), ``%M`` (mtime) and ``%n`` (name) of each file.
STAT_FORMAT = "%i %l %M %n"
#: The same with ``%C``, the whole-file checksum, after the item.
SUM_FORMAT = "%i %C %l %M %n"
LIST_FORMAT = "%i %n"

_ESCAPE = re.compile(rb"\\#([0-7]{3})")
_STAT_LINE = re.compile(rb"^>f\S* +(\d+) (\d{4}/\d\d/\d\d-\d\d:\d\d:\d\d) (.*)$")
_SUM_LINE = re.compile(rb"^>f\S* ([0-9a-f]{32}) +(\d+) (\d{4}/\d\d/\d\d-\d\d:\d\d:\d\d) (.*)$")
_LIST_LINE = re.compile(rb"^>f\S* (.*)$")

#: The time zone rsync's ``%M`` is printed in: UTC, so that it converts back exactly.
TZ = "UTC0"


def unescape(raw: bytes) -> bytes:
    """A name as rsync printed it in ``%n``, its ``\\#ooo`` escapes undone."""
    return _ESCAPE.sub(lambda m: bytes([int(m[1], 8)]), raw)


def decode_name(raw: bytes) -> str:
    """The name (as text) rsync printed in ``%n``."""
    return unescape(raw).decode("utf-8", "surrogateescape")


def parse_mtime(text: bytes) -> int:
    """Seconds since the epoch of a ``%M`` printed in UTC (``yyyy/mm/dd-hh:mm:ss``)."""
    return calendar.timegm(time.strptime(text.decode("ascii"), "%Y/%m/%d-%H:%M:%S"))


def parse_stats(output: bytes) -> dict[str, RemoteStat]:
    """Regular files of a dry-run pull printed with STAT_FORMAT."""
    found = {}
    for line in output.split(b"\n"):
        match = _STAT_LINE.match(line)
        if match is not None:
            found[decode_name(match[3])] = RemoteStat(int(match[1]), parse_mtime(match[2]))
    return found


def parse_sums(output: bytes) -> dict[str, str]:
    """md5 of each regular file of a dry-run pull printed with SUM_FORMAT."""
    found = {}
    for line in output.split(b"\n"):
        match = _SUM_LINE.match(line)
        if match is not None:
            found[decode_name(match[4])] = match[1].decode("ascii")
    return found


def refusal(stderr: bytes) -> str:
    """Why the far side refused: rrsync's own message if it gave one, else rsync's last."""
    for line in stderr.decode("utf-8", "replace").splitlines():
        if "rrsync error:" in line:
            return line.strip()
    return last_line(stderr)


def _work_dir() -> str:
    return tempfile.mkdtemp(prefix=f"{WORK_PREFIX}{os.getpid()}-")


def remove_stale_work() -> int:
    """Remove the work dirs (empty targets, name lists) of runs that were killed."""
    return remove_stale_dirs(WORK_PREFIX)


class RsyncProtocol:
    """The rsync-only operations of a destination; a kind supplies how to reach it.

    ``remote`` is the rsync spec of the base dir (``host:dir`` or ``rsync://...``),
    ``extra`` the options that reach it (``-e ssh ...``, a password file), ``env``
    the environment of each rsync. With ``serialize``, one session runs at a time
    (rrsync, by default, lets a user run one at a time; a second one dies).
    """

    def __init__(self, options: TransferOptions, group: ProcGroup, describe: str,
                 serialize: bool) -> None:
        self.options = options
        self.group = group
        self.where = describe
        self._lock: contextlib.AbstractContextManager = (
            threading.Lock() if serialize else contextlib.nullcontext())

    def _run(self, argv: list[str], env: dict[str, str], input: bytes | None,
             timeout: float | None) -> ProcResult:
        with self._lock:
            return run(argv, input=input, timeout=timeout, env=env, group=self.group)

    def _check(self, result: ProcResult, what: str) -> None:
        """TransportError unless rsync ran (exit 0, or 23/24: some names missing)."""
        if result.timed_out:
            raise TransportError(f"{what} on {self.where} timed out after "
                                 f"{result.duration:.1f} s", timed_out=True)
        if result.returncode not in (0, *PARTIAL_EXIT_CODES):
            raise TransportError(f"{what} on {self.where} failed (exit {result.returncode}): "
                                 f"{refusal(result.stderr)}")

    def prepare(self, remote: str, extra: list[str], env: dict[str, str]) -> None:
        """Create the base dir: send an empty dir there with --mkpath."""
        empty = _work_dir()
        try:
            os.chmod(empty, 0o755)
            argv = [self.options.rsync, "--dirs", "--mkpath", *extra]
            if self.options.chmod:
                argv.append(f"--chmod={self.options.chmod}")
            result = self._run([*argv, "--", empty + "/", remote + "/"], env, None,
                               self.options.cmd_timeout)
        finally:
            os.rmdir(empty)
        if result.timed_out or result.returncode != 0:
            self._check(result, "creating the base dir")
            raise TransportError(f"cannot create {self.where}: {refusal(result.stderr)}")

    def copy(self, staging_dir: str, rel_paths: list[str], force: bool, remote: str,
             extra: list[str], env: dict[str, str]) -> ProcResult:
        """Send the staged paths, their names only in the --files-from list."""
        argv = rsync_argv(self.options, staging_dir, remote + "/", force=force)
        cut = argv.index("--")
        return self._run([*argv[:cut], *extra, *argv[cut:]], env,
                         rsync_files_from(rel_paths), self.options.copy_timeout)

    def _pull(self, rel_paths: list[str], remote: str, extra: list[str], env: dict[str, str],
              checksum: bool, timeout: float | None) -> bytes:
        empty = _work_dir()
        try:
            argv = [self.options.rsync, "--dry-run", "-8", "--from0", "--files-from=-",
                    f"--out-format={SUM_FORMAT if checksum else STAT_FORMAT}", *extra]
            if checksum:
                argv += ["--checksum", "--checksum-choice=md5"]
            result = self._run([*argv, "--", remote + "/", empty + "/"], {**env, "TZ": TZ},
                               rsync_files_from(rel_paths), timeout)
        finally:
            shutil.rmtree(empty, ignore_errors=True)
        self._check(result, "far-side md5" if checksum else "far-side stat")
        return result.stdout

    def checksums(self, rel_paths: list[str], total_bytes: int, remote: str,
                  extra: list[str], env: dict[str, str]) -> dict[str, str]:
        """md5 of the stored bytes of each path there, computed by the far side's rsync."""
        if not rel_paths:
            return {}
        timeout = scaled_timeout(self.options.cmd_timeout, total_bytes)
        out = self._pull(rel_paths, remote, extra, env, True, timeout)
        asked = set(rel_paths)
        return {name: md5 for name, md5 in parse_sums(out).items() if name in asked}

    def stat(self, rel_paths: list[str], remote: str, extra: list[str],
             env: dict[str, str]) -> dict[str, RemoteStat]:
        """Size and mtime of each path there that is a regular file."""
        if not rel_paths:
            return {}
        out = self._pull(rel_paths, remote, extra, env, False, self.options.cmd_timeout)
        asked = set(rel_paths)
        return {name: st for name, st in parse_stats(out).items() if name in asked}

    def list_files(self, expected_files: int, on_warning: Warn | None, remote: str,
                   extra: list[str], env: dict[str, str]) -> Iterator[str]:
        """Every regular file there, in bytewise order (sorted here, on disk, by sort -z)."""
        timeout = list_timeout(self.options.cmd_timeout, expected_files)
        work = _work_dir()
        try:
            empty = os.path.join(work, "empty")
            os.mkdir(empty)
            names = os.path.join(work, "names")
            argv = [self.options.rsync, "--dry-run", "--recursive", "-8",
                    f"--out-format={LIST_FORMAT}", *extra, "--", remote + "/", empty + "/"]
            with self._lock:
                result = _stream_names(argv, env, timeout, self.group, names)
            self._check(result, "listing the files")
            if result.returncode != 0 and on_warning is not None:
                for line in result.stderr.decode("utf-8", "replace").splitlines()[-20:]:
                    if line.strip():
                        on_warning(f"listing {self.where}: {line.strip()}")
            stream = Stream(["sort", "-z", names], env={**os.environ, "LC_ALL": "C"},
                            group=self.group)
            yield from read_listing(stream, self.where, None)
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _stream_names(argv: list[str], env: dict[str, str], timeout: float | None,
                  group: ProcGroup, path: str) -> ProcResult:
    """Run a listing rsync, writing the regular files it prints NUL-separated to path."""
    with open(path, "wb") as out, Stream(argv, timeout=timeout, env=env, group=group) as stream:
        for line in stream.records(b"\n"):
            match = _LIST_LINE.match(line)
            if match is not None:
                out.write(unescape(match[1]) + b"\0")
    assert stream.result is not None
    return stream.result


class RsyncOnly:
    """The Transport operations of a kind that speaks nothing but rsync (a mixin).

    The kind sets ``proto`` and says how to reach its base dir: ``_remote()`` (the
    rsync spec), ``_extra()`` (options) and ``_env()`` (rsync's environment).
    """

    proto: RsyncProtocol
    capabilities = RSYNC_PROTOCOL_CAPABILITIES

    def _remote(self) -> str:
        raise NotImplementedError

    def _extra(self) -> list[str]:
        return []

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    def prepare(self) -> None:
        self.proto.prepare(self._remote(), self._extra(), self._env())

    def copy(self, staging_dir: str, rel_paths: list[str], force: bool = False) -> ProcResult:
        return self.proto.copy(staging_dir, rel_paths, force, self._remote(), self._extra(),
                               self._env())

    def checksums(self, rel_paths: list[str], total_bytes: int = 0) -> dict[str, str]:
        return self.proto.checksums(rel_paths, total_bytes, self._remote(), self._extra(),
                                    self._env())

    def stat(self, rel_paths: list[str]) -> dict[str, RemoteStat]:
        return self.proto.stat(rel_paths, self._remote(), self._extra(), self._env())

    def list_files(self, expected_files: int = 0,
                   on_warning: Warn | None = None) -> Iterator[str]:
        return self.proto.list_files(expected_files, on_warning, self._remote(),
                                     self._extra(), self._env())
