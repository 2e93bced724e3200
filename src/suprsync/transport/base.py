"""The interface every destination implements, and what they share."""

from __future__ import annotations

import abc
import enum
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from ..procs import Stream


class TransportError(RuntimeError):
    """A whole operation against the destination failed (not one file)."""

    def __init__(self, message: str, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class StagingFailed(RuntimeError):
    """This host could not lay out the files to send (a full temp dir): no file's fault.

    Not a TransportError: the destination is not in doubt, this host is.
    """


@dataclass(frozen=True)
class TransferOptions:
    """Transfer settings shared by every destination."""

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


@dataclass(frozen=True)
class Access:
    """How to reach and log in to a remote destination (what its URL does not say).

    Kinds take what applies to them: ssh the key, port and known_hosts; an rsync
    daemon the password file. A port in the URL wins over ``port``.
    """

    key: str | None = None
    port: int | None = None
    known_hosts: str | None = None
    strict_host_key_checking: str = "yes"
    connect_timeout: float = 20.0
    extra_options: tuple[str, ...] = field(default_factory=tuple)
    ssh: str = "ssh"
    #: Share one connection among all calls to the host (ssh ControlMaster).
    reuse_connection: bool = True
    fast_ciphers: bool = True
    #: Password file of an rsync daemon (else RSYNC_PASSWORD from the environment).
    password_file: str | None = None
    #: False: the ssh key may run nothing but rsync (rrsync); every check is an rsync session.
    remote_shell: bool = True


@dataclass(frozen=True)
class Capabilities:
    """What a kind of destination can do; the steps decide on these, never on a kind's name."""

    #: Hashes the far side computes of the stored bytes (e.g. ``{"md5"}``).
    hashes: frozenset[str] = frozenset({"md5"})
    #: Hashing reads the stored bytes again (rather than reporting what was written).
    rereads: bool = True
    #: The stored file keeps the source's mtime (stat can compare it).
    keeps_mtime: bool = True
    #: The kind runs commands other than rsync on the far side (a login shell).
    remote_shell: bool = False


class SendStatus(enum.Enum):
    """How one send call ended as a whole."""

    OK = "ok"
    TIMED_OUT = "timed out"
    ABORTED = "aborted"
    #: The destination (or the way to it) failed: no file is to blame.
    DESTINATION_FAILED = "destination failed"


class Blame(enum.Enum):
    """Whose fault a file's failure is."""

    FILE = "file"
    DESTINATION = "destination"


@dataclass(frozen=True)
class FileFailure:
    """Why one file was not sent."""

    reason: str
    blame: Blame = Blame.FILE


#: One file to send: (local path, path relative to the base dir).
Outgoing = tuple[str, str]


@dataclass
class SendResult:
    """The outcome of one send call: for the call, and for each file not sent.

    A file not in ``failed`` was sent (or was already there, unchanged) as far as
    the kind can tell; its copy still has to be verified. With a status other
    than OK no file was sent for certain and none is to blame.
    """

    status: SendStatus
    failed: dict[str, FileFailure] = field(default_factory=dict)
    #: For a failed call: what went wrong, in one line.
    reason: str = ""
    #: Seconds the call took.
    duration: float = 0.0
    #: For an OK call: problems that did not stop it (files that could not be sent).
    warning: str = ""

    @property
    def ok(self) -> bool:
        """True when the call as a whole succeeded (some files may still have failed)."""
        return self.status is SendStatus.OK

    def sent(self, rel_paths: Sequence[str]) -> list[str]:
        """Those of ``rel_paths`` the call sent."""
        if not self.ok:
            return []
        return [rel for rel in rel_paths if rel not in self.failed]


class Transport(abc.ABC):
    """Sends files to one destination and answers questions about the copies there."""

    #: What this kind can do (each kind sets its own).
    capabilities: Capabilities = Capabilities()

    def __init__(self, remote_basedir: str, options: TransferOptions) -> None:
        self.remote_basedir = remote_basedir
        self.options = options
        self._aborted = False
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

    @property
    def aborted(self) -> bool:
        """True once abort() was called: what runs or starts later is stopped."""
        return self._aborted

    def abort(self) -> None:
        """Stop running transfers and checks now, and any started later (copies are atomic)."""
        self._aborted = True
        self.stop_all()

    def stop_all(self) -> None:  # noqa: B027 - optional hook, nothing runs by default
        """Kill what this transport runs (the kind's part of abort())."""

    @abc.abstractmethod
    def describe(self) -> str:
        """Where files go, for logs."""

    @abc.abstractmethod
    def prepare(self) -> None:
        """Make sure the remote base dir exists; raise TransportError otherwise."""

    @abc.abstractmethod
    def send(self, files: Sequence[Outgoing], force: bool = False) -> SendResult:
        """Send each local file to its path under the base dir, atomically.

        ``force`` re-sends files that look unchanged on the destination. A file
        is never visible there under its final name before it is complete.
        Failures are returned, not raised, except StagingFailed (this host could
        not prepare the call).
        """

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
