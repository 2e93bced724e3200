"""Noticing that an sqlite catalog file changed under a running agent, and what to do.

An open sqlite connection keeps using the file it opened: deleted, renamed or
replaced, the old inode goes on working, unseen by every other program. So the
agent compares the file at the catalog's path with the one it opened, and
judges the errors the catalog gives it. ``verdict`` is the policy, pure; the
rest looks at the file.
"""

from __future__ import annotations

import enum
import os
import sqlite3
import urllib.parse
import weakref
from dataclasses import dataclass

from .schema import FILES_TABLE, TIMECODE_TABLE

#: sqlite result codes that mean the file itself is damaged (not busy, full or read-only).
DAMAGED = ("SQLITE_CORRUPT", "SQLITE_NOTADB")


@dataclass(frozen=True)
class FileId:
    """Which file a path named: device and inode."""

    dev: int
    ino: int


def file_id(path: str) -> FileId | None:
    """The file at path now, or None when there is none."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return FileId(st.st_dev, st.st_ino)


#: The first bytes of every sqlite database file.
SQLITE_HEADER = b"SQLite format 3\x00"


def header_problem(head: bytes) -> str | None:
    """Why a file beginning with these (up to 100) bytes is not sqlite, or None."""
    if not head:
        return "it is empty"
    if len(head) < 100 or not head.startswith(SQLITE_HEADER):
        return "it does not begin with an sqlite header"
    return None


def schema_problem(path: str) -> str | None:
    """Why sqlite finds no catalog at path, or None when it finds one.

    Opened read-only through sqlite and reading only the schema: cheap whatever
    the catalog's size, and safe while this process has the file open.
    """
    uri = f"file:{urllib.parse.quote(path)}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=5)
    except sqlite3.Error as exc:
        return str(exc)
    try:
        tables = {name for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc).lower() or "busy" in str(exc).lower():
            return None  # another writer holds it: a catalog, busy
        return str(exc)
    except sqlite3.Error as exc:
        return str(exc)
    finally:
        conn.close()
    missing = sorted({FILES_TABLE, TIMECODE_TABLE} - tables)
    return f"it has no table {', '.join(missing)}" if missing else None


def catalog_problem(path: str) -> str | None:
    """Why the file at path is not a catalog, or None when it is one.

    Only for a file no sqlite connection of this process has open: closing a
    descriptor of a file drops every lock the process holds on it, sqlite's too.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(100)
    except OSError as exc:
        return f"it cannot be read: {exc.strerror or exc}"
    return header_problem(head) or schema_problem(path)


class Action(enum.Enum):
    """What the agent does about the state of its catalog file."""

    CONTINUE = "continue"
    #: Close every connection; the next ones open the file now at the path.
    REOPEN = "reopen"
    #: Fail this iteration and look again at the next.
    WAIT = "wait"
    #: Stop with a non-zero status: only a restart (or an operator) can help.
    EXIT = "exit"


@dataclass(frozen=True)
class Verdict:
    action: Action
    #: What happened to the catalog file, for the log; empty when nothing did.
    what: str = ""


def verdict(opened: FileId | None, now: FileId | None, problem: str | None,
            error_code: str | None, writable: bool = True) -> Verdict:
    """Judge the catalog file: the one opened, the one at its path now, and the last error.

    ``problem``: why the file now at the path is not a catalog (None: it is one,
    or there is none). ``error_code``: the sqlite result code of the error the
    catalog gave (``SQLITE_FULL``, ...), None when there was none. ``writable``:
    whether the file may be written (not read-only, not immutable).
    """
    if now is None:
        return Verdict(Action.EXIT, "was deleted or renamed")
    if opened is not None and now != opened:
        if problem is not None:
            return Verdict(Action.EXIT, f"was replaced by a file that is not a catalog "
                                        f"({problem})")
        return Verdict(Action.REOPEN, "was replaced by another catalog")
    if problem is not None:
        return Verdict(Action.EXIT, f"is damaged: {problem}")
    if error_code is not None and error_code.startswith(DAMAGED):
        return Verdict(Action.EXIT, f"is damaged ({error_code})")
    if not writable:
        return Verdict(Action.WAIT, "cannot be written (read-only or immutable)")
    if error_code is not None:
        # Full, read-only, an I/O error: fresh connections once it is fixed.
        return Verdict(Action.REOPEN)
    return Verdict(Action.CONTINUE)


def error_code(exc: BaseException) -> str | None:
    """The sqlite result code behind an error (SQLAlchemy's or sqlite3's), if any."""
    seen = 0
    while exc is not None and seen < 5:
        name = getattr(exc, "sqlite_errorname", None)
        if isinstance(name, str):
            return name
        exc = getattr(exc, "orig", None) or exc.__cause__  # type: ignore[assignment]
        seen += 1
    return None


class CatalogWatch:
    """The catalog file an agent opened, compared with what its path holds now.

    It holds a descriptor of the file opened, never closed while connections
    use that file (closing it would drop their locks), to read its header.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.opened: FileId | None = None
        self._fd: int | None = None
        self.reopen()
        # A fault was seen: connections opened since may be read-only or broken.
        self._unwell = False

    def judge(self, exc: BaseException | None = None) -> Verdict:
        """The verdict on the file now, after the error exc (or none).

        The first clean look after a fault asks for a reopen, with nothing to log.
        """
        now = file_id(self.path)
        code = error_code(exc) if exc is not None else None
        if now is not None and now != self.opened:
            problem = catalog_problem(self.path)  # another file: safe to open here
        else:
            problem = self._header_problem()
            if problem is None and now is not None and exc is not None:
                problem = schema_problem(self.path)
        writable = now is None or os.access(self.path, os.W_OK)
        result = verdict(self.opened, now, problem, code, writable)
        if result.action is Action.CONTINUE and self._unwell:
            result = Verdict(Action.REOPEN)
        self._unwell = result.action is not Action.CONTINUE
        return result

    def _header_problem(self) -> str | None:
        if self._fd is None:
            return None
        try:
            return header_problem(os.pread(self._fd, 100, 0))
        except OSError as exc:
            return f"it cannot be read: {exc.strerror or exc}"

    def release(self) -> None:
        """Close the descriptor; only once no connection of this process uses the file."""
        if self._fd is not None:
            self._closer()
            self._fd = None

    def reopen(self) -> None:
        """Watch the file now at the path (after release())."""
        self.release()
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self.opened = None
            return
        self._fd = fd
        self._closer = weakref.finalize(self, os.close, fd)
        st = os.fstat(fd)
        self.opened = FileId(st.st_dev, st.st_ino)


class CatalogLost(RuntimeError):
    """The catalog file is gone or damaged: the agent cannot go on with it."""
