"""Whose fault an error is: a whole place (a file system, a directory) or one file."""

from __future__ import annotations

import errno
import os

#: Errors that no file name can cause: the file system as a whole refuses writes.
PLACE_ERRNOS = frozenset({
    errno.EROFS,
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EIO,
    errno.ESTALE,
    errno.ENOTCONN,
    errno.ENODEV,
})

#: Errors that mean a directory may not be written, when creating something in it.
PERMISSION_ERRNOS = frozenset({errno.EACCES, errno.EPERM})


def blames_the_place(code: int | None, creating: bool = True) -> bool:
    """True when an error of this errno is the fault of where a file goes, not of the file.

    ``creating``: the failed call made a file or directory, so a permission
    error means its directory may not be written.
    """
    if code is None:
        return False
    return code in PLACE_ERRNOS or (creating and code in PERMISSION_ERRNOS)


def describe(exc: OSError) -> str:
    """An OSError in one line: its message and the path it is about."""
    text = exc.strerror or str(exc) or type(exc).__name__
    name = exc.filename2 if exc.filename2 is not None else exc.filename
    return f"{text}: {os.fsdecode(name)!r}" if name is not None else text
