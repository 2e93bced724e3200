"""Validation of catalog paths, which are untrusted input."""

from __future__ import annotations

import os
import posixpath
import re
import stat

_TIMECODE_RE = re.compile(r"[1-9][0-9]{4}")


def normalize_remote_path(remote_path: str) -> str:
    """Return the canonical form of a remote path, or raise ValueError.

    A remote path is relative to the remote base dir and must stay inside it:
    not empty, not absolute, no NUL, no ``..`` component, not a directory.
    Repeated slashes and ``.`` components are dropped.
    """
    if not isinstance(remote_path, str):
        raise ValueError(f"remote path must be a string, not {type(remote_path).__name__}")
    if remote_path == "":
        raise ValueError("remote path is empty")
    if "\x00" in remote_path:
        raise ValueError(f"remote path contains a NUL byte: {remote_path!r}")
    if remote_path.startswith("/"):
        raise ValueError(f"remote path is absolute: {remote_path!r}")
    if remote_path.endswith("/"):
        raise ValueError(f"remote path names a directory: {remote_path!r}")
    parts = [p for p in remote_path.split("/") if p not in ("", ".")]
    if not parts:
        raise ValueError(f"remote path has no file name: {remote_path!r}")
    if ".." in parts:
        raise ValueError(f"remote path climbs out of the base dir with '..': {remote_path!r}")
    return posixpath.join(*parts)


#: Remote paths written like these are changed or refused by normalize_remote_path.
ODD_WHOLE = ("", ".", "..")
ODD_START = ("/", "./", "../")
ODD_END = ("/", "/.", "/..")
ODD_INSIDE = ("//", "/./", "/../")


def is_canonical(path: str) -> bool:
    """True when normalize_remote_path returns the path unchanged (a fast test)."""
    return not (path in ODD_WHOLE or path.startswith(ODD_START) or path.endswith(ODD_END)
                or any(part in path for part in ODD_INSIDE) or "\0" in path)


def normalized(path: str) -> str:
    """normalize_remote_path, skipped for paths already canonical."""
    return path if isinstance(path, str) and is_canonical(path) else normalize_remote_path(path)


def parents(key: str) -> list[str]:
    """The proper ancestors of a normalized path: ``a/b/c`` -> ``["a", "a/b"]``."""
    parts = key.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def timecode_of(remote_path: str) -> int | None:
    """The 5-digit timecode a remote path starts with, or None."""
    first, sep, _rest = remote_path.lstrip("/").partition("/")
    if sep and _TIMECODE_RE.fullmatch(first):
        return int(first)
    return None


def subdir_of(remote_path: str) -> str | None:
    """The second path element when the file sits below a subdir of its timecode dir."""
    parts = [p for p in remote_path.split("/") if p not in ("", ".")]
    return parts[1] if len(parts) > 2 else None


def check_local_file(local_path: str) -> os.stat_result:
    """Stat a local file without following a symlink; OSError unless it is a regular file."""
    st = os.lstat(local_path)
    if stat.S_ISLNK(st.st_mode):
        raise OSError(f"{local_path!r} is a symbolic link, not a regular file")
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(f"{local_path!r} is a directory, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise OSError(f"{local_path!r} is not a regular file (FIFO, socket or device)")
    return st
