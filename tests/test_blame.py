"""Whose fault an OSError is, and how it reads in one line (pure logic)."""

from __future__ import annotations

import errno

import pytest

from suprsync.blame import blames_the_place, describe


@pytest.mark.parametrize(("code", "creating", "expected"), [
    (errno.EROFS, True, True),
    (errno.ENOSPC, True, True),
    (errno.EDQUOT, False, True),
    (errno.EIO, True, True),
    (errno.ESTALE, True, True),
    (errno.EACCES, True, True),
    (errno.EPERM, True, True),
    (errno.EACCES, False, False),  # setting an attribute: the file was written
    (errno.ENAMETOOLONG, True, False),
    (errno.EEXIST, True, False),
    (errno.ENOENT, True, False),
    (errno.EILSEQ, True, False),
    (None, True, False),
])
def test_blames_the_place(code: int | None, creating: bool, expected: bool) -> None:
    assert blames_the_place(code, creating) is expected


@pytest.mark.parametrize(("exc", "text"), [
    (OSError(errno.ENOSPC, "No space left on device", "/t/x"),
     "No space left on device: '/t/x'"),
    (OSError(errno.EROFS, "Read-only file system", "/a", None, "/t/link"),
     "Read-only file system: '/t/link'"),
    (OSError(errno.EIO, "Input/output error", b"/t/\xff"),
     "Input/output error: '/t/\\udcff'"),
    (OSError("no errno"), "no errno"),
    (OSError(), "OSError"),
])
def test_describe(exc: OSError, text: str) -> None:
    assert describe(exc) == text
