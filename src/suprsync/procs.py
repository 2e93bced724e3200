"""Running external programs with argument lists, a time limit, and a clean kill."""

from __future__ import annotations

import ctypes
import os
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType

from .childpids import ChildLedger


@dataclass(frozen=True)
class ProcResult:
    """How a program ended."""

    argv: list[str]
    returncode: int | None
    stdout: bytes
    stderr: bytes
    timed_out: bool
    duration: float

    @property
    def ok(self) -> bool:
        """True when it exited 0 in time."""
        return self.returncode == 0 and not self.timed_out

    def stderr_tail(self, limit: int = 500) -> str:
        """The end of stderr as text, for logs."""
        text = self.stderr.decode("utf-8", "replace").strip()
        return text[-limit:]


class ProcGroup:
    """The children one owner has running, so that they can be stopped together."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen] = set()
        self.aborted = False

    def add(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs.add(proc)
            if self.aborted:
                kill_group(proc)

    def discard(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs.discard(proc)

    def kill_all(self) -> None:
        """SIGKILL every running child (and what it started); later ones die at start."""
        with self._lock:
            self.aborted = True
            for proc in self._procs:
                kill_group(proc)


def run(argv: list[str], input: bytes | None = None, timeout: float | None = None,
        env: dict[str, str] | None = None, group: ProcGroup | None = None) -> ProcResult:
    """Run argv (never through a shell); on timeout kill its whole process group.

    ``input`` of any size is written to the program's stdin as it reads it, then
    stdin is closed. Output is read at the same time, so neither side can block.
    """
    start = time.monotonic()
    proc = _spawn(argv, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                  env=env)
    if group is not None:
        group.add(proc)
    deadline = None if timeout is None else start + timeout
    try:
        out, err, timed_out = _exchange(proc, input, deadline)
        proc.wait()
    except BaseException:
        kill_group(proc)
        proc.wait()
        raise
    finally:
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None and not pipe.closed:
                pipe.close()
        if group is not None:
            group.discard(proc)
        _forget(proc)
    return ProcResult(list(argv), proc.returncode, out, err, timed_out,
                      time.monotonic() - start)


#: Seconds to wait for the output pipes of a killed program to close.
DRAIN_AFTER_KILL = 1.0
#: Seconds between checks that a program has not ended with its pipes held open.
POLL = 0.5
#: Bytes moved per read or write.
IO_CHUNK = 1 << 16


def _slice(remaining: float | None) -> float:
    return POLL if remaining is None else min(POLL, remaining)


def _exchange(proc: subprocess.Popen, input: bytes | None,
              deadline: float | None) -> tuple[bytes, bytes, bool]:
    """Feed stdin, read stdout and stderr until both close; (stdout, stderr, timed out).

    A program that ends while another process (such as an ssh connection master)
    still holds its pipes is not waited for: once it has ended, reading stops
    after DRAIN_AFTER_KILL seconds without data, and stdin is closed unread. On
    the time limit its process group is killed and output is read for at most
    DRAIN_AFTER_KILL more seconds.
    """
    outputs: dict[int, bytearray] = {}
    view = memoryview(input or b"")
    offset = 0
    timed_out = False
    #: When reading stops at the latest (set once the program has ended or was killed).
    cutoff: float | None = None
    with selectors.DefaultSelector() as selector:
        for pipe in (proc.stdout, proc.stderr):
            assert pipe is not None
            outputs[pipe.fileno()] = bytearray()
            selector.register(pipe, selectors.EVENT_READ)
        if proc.stdin is not None:
            if view:
                os.set_blocking(proc.stdin.fileno(), False)
                selector.register(proc.stdin, selectors.EVENT_WRITE)
            else:
                proc.stdin.close()
        while selector.get_map():
            now = time.monotonic()
            if deadline is not None and now >= deadline and not timed_out:
                kill_group(proc)
                timed_out = True
                cutoff = now + DRAIN_AFTER_KILL
            if cutoff is None and proc.poll() is not None:
                cutoff = now + DRAIN_AFTER_KILL
            if cutoff is not None and now >= cutoff:
                break
            wait = _slice(None if deadline is None or timed_out else deadline - now)
            if cutoff is not None:
                wait = min(wait, cutoff - now)
            events = selector.select(max(0.0, wait))
            for key, _ in events:
                if key.fileobj is proc.stdin:
                    try:
                        offset += os.write(key.fd, view[offset:offset + IO_CHUNK])
                    except BlockingIOError:
                        continue
                    except BrokenPipeError:
                        offset = len(view)  # the program stopped reading: not an error
                    if offset >= len(view):
                        selector.unregister(key.fileobj)
                        key.fileobj.close()
                    continue
                data = os.read(key.fd, IO_CHUNK)
                if not data:
                    selector.unregister(key.fileobj)
                    continue
                outputs[key.fd] += data
                if cutoff is not None and not timed_out and (proc.returncode or 0) >= 0:
                    # Output still flows after the end: give it time to finish.
                    cutoff = time.monotonic() + DRAIN_AFTER_KILL
    assert proc.stdout is not None and proc.stderr is not None
    return (bytes(outputs[proc.stdout.fileno()]), bytes(outputs[proc.stderr.fileno()]),
            timed_out)


_PR_SET_PDEATHSIG = 1
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: children do not die with their parent
    _prctl = None


def _die_with_parent(parent: int) -> Callable[[], None] | None:
    """A pre-exec step: the child gets SIGKILL when the thread that started it ends.

    It runs in the child between fork and exec and touches nothing but prctl.
    """
    if _prctl is None:
        return None
    prctl = _prctl

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the call
            os._exit(137)

    return preexec


def _spawn(argv: list[str], stdin: int, env: dict[str, str] | None,
           cwd: str | None = None) -> subprocess.Popen:
    """Start argv in a session of its own, dying with us, its pid in the ledger if kept."""
    proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True, env=env,
                            cwd=cwd, preexec_fn=_die_with_parent(os.getpid()))
    ledger = _ledger
    if ledger is not None:
        ledger.add(proc.pid)
    return proc


def _forget(proc: subprocess.Popen) -> None:
    ledger = _ledger
    if ledger is not None:
        ledger.discard(proc.pid)


_ledger: ChildLedger | None = None
_ledger_users = 0
_ledger_lock = threading.Lock()


@contextmanager
def child_ledger(directory: str | None = None) -> Iterator[None]:
    """While inside, every child started is named in this process's ledger file.

    Nested and concurrent uses share one ledger; the last one out removes it.
    """
    global _ledger, _ledger_users
    with _ledger_lock:
        if _ledger is None:
            _ledger = ChildLedger(directory)
        _ledger_users += 1
    try:
        yield
    finally:
        with _ledger_lock:
            _ledger_users -= 1
            if _ledger_users == 0 and _ledger is not None:
                _ledger.close()
                _ledger = None


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a child started with start_new_session and everything it started."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class Stream:
    """A program whose standard output is read while it runs, one record at a time.

    Use it as a context manager: leaving the block kills the program (and what it
    started) if it is still running. Once :meth:`records` is exhausted, ``result``
    tells how the program ended; its ``stdout`` is empty (it was streamed) and its
    ``stderr`` is the last 64 KiB. The time limit covers the whole run, including
    the time the reader spends between records.
    """

    STDERR_KEEP = 64 << 10

    def __init__(self, argv: list[str], timeout: float | None = None,
                 env: dict[str, str] | None = None, cwd: str | None = None,
                 group: ProcGroup | None = None) -> None:
        self.argv = list(argv)
        self.result: ProcResult | None = None
        self._group = group
        self._start = time.monotonic()
        self._deadline = None if timeout is None else self._start + timeout
        self._stderr = bytearray()
        self._proc = _spawn(self.argv, stdin=subprocess.DEVNULL, env=env, cwd=cwd)
        if group is not None:
            group.add(self._proc)

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _remaining(self) -> float | None:
        return None if self._deadline is None else self._deadline - time.monotonic()

    def records(self, sep: bytes = b"\0") -> Iterator[bytes]:
        """Yield stdout split at ``sep`` as it arrives (a last unterminated record too)."""
        proc = self._proc
        assert proc.stdout is not None and proc.stderr is not None
        pending = b""
        last_read = time.monotonic()
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            selector.register(proc.stderr, selectors.EVENT_READ)
            while selector.get_map():
                remaining = self._remaining()
                if remaining is not None and remaining <= 0:
                    self._finish(timed_out=True)
                    return
                events = selector.select(_slice(remaining))
                if not events and proc.poll() is not None \
                        and time.monotonic() - last_read >= DRAIN_AFTER_KILL:
                    # Ended (killed by abort, say) while an ssh connection master
                    # still holds its pipes: nothing more will come.
                    break
                for key, _ in events:
                    last_read = time.monotonic()
                    data = os.read(key.fd, 1 << 16)
                    if not data:
                        selector.unregister(key.fileobj)
                    elif key.fileobj is proc.stderr:
                        self._stderr += data
                        del self._stderr[:-self.STDERR_KEEP]
                    else:
                        *done, pending = (pending + data).split(sep)
                        yield from done
        if pending:
            yield pending
        try:
            proc.wait(timeout=self._remaining())
        except subprocess.TimeoutExpired:
            self._finish(timed_out=True)
            return
        self._finish(timed_out=False)

    def _finish(self, timed_out: bool) -> None:
        proc = self._proc
        if timed_out or proc.poll() is None:
            kill_group(proc)
        # Not drained: an ssh connection master may keep these pipes open.
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        proc.wait()
        if self._group is not None:
            self._group.discard(proc)
        _forget(proc)
        if self.result is None:
            self.result = ProcResult(self.argv, proc.returncode, b"", bytes(self._stderr),
                                     timed_out, time.monotonic() - self._start)

    def close(self) -> None:
        """Kill the program if it still runs, and release its pipes."""
        if self.result is None:
            self._finish(timed_out=False)
