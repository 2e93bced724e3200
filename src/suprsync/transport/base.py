"""The interface every destination implements, and what they share."""

from __future__ import annotations

import abc
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..procs import ProcGroup, ProcResult, Stream


class TransportError(RuntimeError):
    """A whole operation against the destination failed (not one file)."""

    def __init__(self, message: str, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


@dataclass(frozen=True)
class TransferOptions:
    """rsync settings shared by every destination."""

    compression: bool = False
    bwlimit: str | None = None
    chmod: str | None = "g+rwX,o+rX"
    copy_timeout: float | None = None
    cmd_timeout: float | None = None
    rsync: str = "rsync"


@dataclass(frozen=True)
class RemoteStat:
    """Size and whole-second mtime of a file on the destination."""

    size: int
    mtime: int


#: Slowest rate (bytes/s) at which a destination is expected to hash data.
MIN_HASH_RATE = 50e6


def scaled_timeout(cmd_timeout: float | None, total_bytes: int) -> float | None:
    """--cmd-timeout for a command that reads total_bytes: the limit plus time to read them."""
    if cmd_timeout is None:
        return None
    return cmd_timeout + total_bytes / MIN_HASH_RATE


#: Slowest rate (files/s) at which a destination is expected to list and sort its files.
MIN_LIST_RATE = 2000

#: The listing pipeline run in the base dir: every regular file, NUL-separated, bytewise order.
FIND_FILES = ("find", ".", "-type", "f", "-print0")
SORT_BYTEWISE = ("env", "LC_ALL=C", "sort", "-z")

Warn = Callable[[str], None]


def list_timeout(cmd_timeout: float | None, expected_files: int) -> float | None:
    """--cmd-timeout for listing a tree: the limit plus time to list expected_files."""
    if cmd_timeout is None:
        return None
    return cmd_timeout + expected_files / MIN_LIST_RATE


def read_listing(stream: Stream, where: str, on_warning: Warn | None) -> Iterator[str]:
    """Relative paths from a running ``find . -print0 | sort -z``; TransportError if it failed.

    Messages of a listing that still succeeded (an unreadable subdirectory, say)
    go to ``on_warning``.
    """
    with stream:
        for record in stream.records(b"\0"):
            yield record.removeprefix(b"./").decode("utf-8", "surrogateescape")
    result = stream.result
    assert result is not None
    message = last_line(result.stderr)
    if result.timed_out:
        raise TransportError(f"listing the files of {where} timed out after "
                             f"{result.duration:.1f} s", timed_out=True)
    if result.returncode != 0:
        raise TransportError(f"listing the files of {where} failed (exit "
                             f"{result.returncode}): {message}")
    if message and on_warning is not None:
        for line in result.stderr.decode("utf-8", "replace").splitlines()[-20:]:
            if line.strip():
                on_warning(f"listing {where}: {line.strip()}")


def last_line(output: bytes) -> str:
    """The last non-blank line of a program's output, as text."""
    lines = [ln.strip() for ln in output.decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[-1] if lines else ""


#: rsync exit codes that mean some files failed but the transfer as a whole ran.
PARTIAL_EXIT_CODES = (23, 24)


class Transport(abc.ABC):
    """Copies a staged tree to the destination and answers questions about it."""

    def __init__(self, remote_basedir: str, options: TransferOptions) -> None:
        self.remote_basedir = remote_basedir
        self.options = options
        #: Every rsync/ssh child of this transport, so abort() can stop them.
        self.children = ProcGroup()
        self._ready = False
        self._ready_lock = threading.Lock()
        #: A prepare() started by prepare_soon(), and how it failed.
        self._early: threading.Thread | None = None
        self._early_error: Exception | None = None

    def ensure_ready(self) -> None:
        """prepare() once (again after a failure); raise TransportError if it fails.

        After prepare_soon(), the first call waits for that attempt and raises
        its error, rather than trying again at once.
        """
        early = self._early
        if early is not None and early is not threading.current_thread():
            early.join()
            with self._ready_lock:
                self._early = None
                error, self._early_error = self._early_error, None
            if error is not None:
                raise error
        with self._ready_lock:
            if not self._ready:
                self.prepare()
                self._ready = True

    def prepare_soon(self) -> None:
        """Start ensure_ready() in the background (reaching a host while code loads)."""
        def attempt() -> None:
            try:
                self.ensure_ready()
            except Exception as exc:  # raised again by the next ensure_ready()
                self._early_error = exc

        with self._ready_lock:
            if self._ready or self._early is not None:
                return
            self._early = threading.Thread(target=attempt, name="connect", daemon=True)
            self._early.start()

    def abort(self) -> None:
        """Kill running transfers and checks now (copies are atomic, so this is safe)."""
        self.children.kill_all()

    @abc.abstractmethod
    def describe(self) -> str:
        """Where files go, for logs."""

    @abc.abstractmethod
    def prepare(self) -> None:
        """Make sure the remote base dir exists; raise TransportError otherwise."""

    @abc.abstractmethod
    def copy(self, staging_dir: str, rel_paths: list[str], force: bool = False) -> ProcResult:
        """rsync these paths (relative to staging_dir) to the base dir."""

    @abc.abstractmethod
    def checksums(self, rel_paths: list[str], total_bytes: int = 0) -> dict[str, str]:
        """md5 of each path that exists under the base dir (missing ones are left out).

        ``total_bytes`` (their expected size) extends the time limit of remote hashing.
        """

    @abc.abstractmethod
    def stat(self, rel_paths: list[str]) -> dict[str, RemoteStat]:
        """Size and mtime of each path that exists under the base dir (missing ones left out)."""

    @abc.abstractmethod
    def list_files(self, expected_files: int = 0,
                   on_warning: Warn | None = None) -> Iterator[str]:
        """Every regular file under the base dir, relative to it, in bytewise order.

        The names arrive as a stream, so memory stays small however many files
        there are. ``expected_files`` extends the time limit (--cmd-timeout) of
        the listing. An incomplete but finished listing (an unreadable subdirectory)
        is reported to ``on_warning``; a listing that fails raises TransportError.
        """

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release connections."""
