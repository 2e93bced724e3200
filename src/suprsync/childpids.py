"""A file naming the running children of this process, so that a later run can end
those a crash left behind.

Each line is ``<pid> <start time>``, the start time read from ``/proc/<pid>/stat``
(clock ticks since boot). A process is ended only when both match: a pid that was
reused since is someone else's. The file's own name holds the pid and start time
of the process that keeps it, so a later run knows when its keeper is gone.
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile
import threading

log = logging.getLogger(__name__)

#: Ledgers are named <prefix><pid>-<start time> in the temporary directory.
LEDGER_PREFIX = "suprsync-children-"


def start_time(pid: int) -> int | None:
    """When a live process started (clock ticks since boot); None if there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: fields follow the last ')'.
    fields = stat[stat.rindex(b")") + 2:].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


class ChildLedger:
    """Keeps the file of this process's running children up to date."""

    def __init__(self, directory: str | None = None) -> None:
        directory = directory or tempfile.gettempdir()
        me = os.getpid()
        self.path = os.path.join(directory, f"{LEDGER_PREFIX}{me}-{start_time(me)}")
        self._lock = threading.Lock()
        self._children: dict[int, int] = {}
        self._warned = False
        self._write()

    def add(self, pid: int) -> None:
        """Note a child that has just started."""
        started = start_time(pid)
        if started is None:
            return
        with self._lock:
            self._children[pid] = started
            self._write()

    def discard(self, pid: int) -> None:
        """Forget a child that has been waited for."""
        with self._lock:
            if self._children.pop(pid, None) is not None:
                self._write()

    def _write(self) -> None:
        text = "".join(f"{pid} {started}\n" for pid, started in self._children.items())
        tmp = self.path + ".tmp"
        try:
            with open(tmp, "w") as f:
                f.write(text)
            os.replace(tmp, self.path)
        except OSError as exc:
            if not self._warned:  # once: every child start would say it again
                log.warning("cannot record child processes in %s: %s", self.path,
                            exc.strerror)
                self._warned = True

    def close(self) -> None:
        """Remove the file (every child has ended)."""
        for path in (self.path, self.path + ".tmp"):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("cannot remove %s: %s", path, exc.strerror)


def end_stale_children(directory: str | None = None) -> int:
    """SIGKILL the children (with their process groups) of dead keepers of ledgers.

    Looks in ``directory`` (default: the temporary directory) and in /tmp; returns
    how many processes were ended. The ledgers of dead keepers are removed.
    """
    ended = 0
    for root in {directory or tempfile.gettempdir(), "/tmp"}:
        try:
            names = os.listdir(root)
        except OSError:
            continue
        for name in names:
            keeper = _keeper(name)
            if keeper is None or start_time(keeper[0]) == keeper[1]:
                continue
            path = os.path.join(root, name)
            ended += _end_listed(path)
            try:
                os.unlink(path)
            except OSError as exc:
                log.warning("cannot remove the stale ledger %s: %s", path, exc.strerror)
    return ended


def _keeper(name: str) -> tuple[int, int] | None:
    """(pid, start time) of the process that kept the ledger of this name, if it is one."""
    if not name.startswith(LEDGER_PREFIX) or name.endswith(".tmp"):
        return None
    pid, sep, started = name.removeprefix(LEDGER_PREFIX).partition("-")
    if not sep or not pid.isdigit() or not started.isdigit():
        return None
    return int(pid), int(started)


def _end_listed(path: str) -> int:
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return 0
    ended = 0
    for line in lines:
        parts = line.split()
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            continue
        pid, started = int(parts[0]), int(parts[1])
        if start_time(pid) != started:
            continue  # gone, or the pid now belongs to another process
        try:
            # Each child leads a session and process group of its own, as long as it lives.
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        except PermissionError:
            log.warning("process %d left by an earlier run belongs to another user", pid)
            continue
        log.warning("ended process %d, left running by an earlier run that died", pid)
        ended += 1
    return ended
