"""Telling apart, in rsync's messages, a failed destination from a file that failed.

rsync exits 23 both when one file could not be sent and when the destination
took no file at all (a read-only file system, a directory it may not write, no
space). The first charges that file an attempt; the second is a failure of the
whole transfer, which must charge no file. Only rsync's error lines tell them
apart: ``rsync: [role] <operation> "<path>" failed: <strerror> (<errno>)``.
"""

from __future__ import annotations

import re

from ..blame import blames_the_place

#: Receiver operations that create or fill a file or a directory.
CREATING = ("mkdir", "mkstemp", "rename", "open", "write failed", "make_bak_dir",
            "symlink", "link", "mknod", "ftruncate", "close failed")

#: Operations of the sending side (the local file), for rsync versions that name no role.
SENDING = ("link_stat", "send_files", "readlink", "read errors", "change_dir")

_LINE = re.compile(
    r"^rsync:\s+(?:\[(?P<role>[A-Za-z]+)\]\s+)?(?P<what>.*?)\s*\((?P<errno>\d+)\)\s*$")


def destination_failure(stderr: bytes | str) -> str | None:
    """The first of rsync's messages that blames the destination, or None.

    Messages about the sending side (a local file unreadable or gone), about
    attributes (times or permissions that could not be set, for lack of rights)
    and about one name (too long, not valid there, in the way) blame no
    destination. The message is returned without its ``rsync: [role]`` prefix.
    """
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
    for line in text.splitlines():
        match = _LINE.match(line.strip())
        if match is None:
            continue
        what = match["what"]
        if _blames_destination((match["role"] or "").lower(), what, int(match["errno"])):
            return what
    return None


def _blames_destination(role: str, what: str, code: int) -> bool:
    if role == "sender" or any(what.startswith(op) for op in SENDING):
        return False
    # A permission error on an attribute ("failed to set times on ...") is not one
    # on creating: those files were written.
    operation = what.removeprefix("recv_generator: ")
    return blames_the_place(code, creating=operation.startswith(CREATING))
