"""Running external programs with argument lists, a time limit, and a clean kill."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType


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
    """Run argv (never through a shell); on timeout kill its whole process group."""
    start = time.monotonic()
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        env=env,
    )
    if group is not None:
        group.add(proc)
    deadline = None if timeout is None else start + timeout
    pending_input = input
    try:
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                # Input goes in with the first call only; later calls go on reading.
                given, pending_input = pending_input, None
                out, err = proc.communicate(input=given, timeout=_slice(remaining))
                timed_out = False
                break
            except subprocess.TimeoutExpired:
                if remaining is not None and remaining <= POLL:
                    kill_group(proc)
                    out, err = _output_after_kill(proc)
                    timed_out = True
                    break
                if proc.poll() is not None:
                    # Ended (e.g. killed by abort) while another process, such as an ssh
                    # connection master, still holds its pipes: take what is there.
                    out, err = _output_after_kill(proc)
                    timed_out = False
                    break
    except BaseException:
        kill_group(proc)
        proc.wait()
        raise
    finally:
        if group is not None:
            group.discard(proc)
    return ProcResult(list(argv), proc.returncode, out or b"", err or b"", timed_out,
                      time.monotonic() - start)


#: Seconds to wait for the output pipes of a killed program to close.
DRAIN_AFTER_KILL = 1.0
#: Seconds between checks that a program has not ended with its pipes held open.
POLL = 0.5


def _slice(remaining: float | None) -> float:
    return POLL if remaining is None else min(POLL, remaining)


def _output_after_kill(proc: subprocess.Popen) -> tuple[bytes, bytes]:
    """What a killed program wrote; stop reading pipes that another process keeps open.

    An ssh connection master holds the stdout and stderr of its clients until the
    remote command ends, which for a hung remote command may be never.
    """
    try:
        return proc.communicate(timeout=DRAIN_AFTER_KILL)
    except subprocess.TimeoutExpired:
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        proc.wait()
        return b"", b""


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
        self._proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      start_new_session=True, env=env, cwd=cwd)
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
        if self.result is None:
            self.result = ProcResult(self.argv, proc.returncode, b"", bytes(self._stderr),
                                     timed_out, time.monotonic() - self._start)

    def close(self) -> None:
        """Kill the program if it still runs, and release its pipes."""
        if self.result is None:
            self._finish(timed_out=False)
