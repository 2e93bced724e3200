"""Running external programs with argument lists, a time limit, and a clean kill."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass


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
    try:
        out, err = proc.communicate(input=input, timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, err = proc.communicate()
        timed_out = True
    except BaseException:
        kill_group(proc)
        proc.wait()
        raise
    finally:
        if group is not None:
            group.discard(proc)
    return ProcResult(list(argv), proc.returncode, out or b"", err or b"", timed_out,
                      time.monotonic() - start)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a child started with start_new_session and everything it started."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
