"""Judging a remote copy: pure functions shared by every place that decides whether a
file's copy on the destination is good.

The same md5 rule serves the three moments a copy is judged: just after it was
sent (:func:`judge_copy`), before its local file is deleted
(:func:`judge_before_delete`) and in ``suprsync audit`` (:func:`judge_audit`).
They only compare what they are given; measuring (stat, md5) is the caller's.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Kinds of verdict (the audit's categories use the same names).
VERIFIED = "verified"
MISSING = "missing"
SIZE_MISMATCH = "size_mismatch"
MTIME_MISMATCH = "mtime_mismatch"
MD5_MISMATCH = "md5_mismatch"


@dataclass(frozen=True)
class Verdict:
    """What a comparison found: its kind, and a sentence saying why when it is not good."""

    kind: str
    detail: str = ""

    @property
    def ok(self) -> bool:
        """True when the remote copy is good."""
        return self.kind == VERIFIED


GOOD = Verdict(VERIFIED)


def judge_copy(local_md5: str | None, remote_md5: str | None) -> Verdict:
    """The far side's md5 of a copy against the md5 its bytes must have.

    No md5 from the far side means the file is not there; a copy is never good
    when either md5 is unknown.
    """
    if remote_md5 is None:
        return Verdict(MISSING, "no md5 from the destination: the file is not there")
    if local_md5 is None or remote_md5 != local_md5:
        return Verdict(MD5_MISMATCH, f"remote md5 {remote_md5}, expected {local_md5}")
    return GOOD


def judge_before_delete(expected_md5: str, local_size: int, local_mtime: float,
                        remote_size: int | None, remote_mtime: int | None,
                        remote_md5: str | None = None, check_md5: bool = False) -> Verdict:
    """Whether a verified copy still matches its local file, checked before deleting it.

    The copy must exist with the local file's size and (whole-second) mtime and,
    with ``check_md5``, still have the registered md5. ``remote_size`` None: the
    destination has no such file.
    """
    if remote_size is None:
        return Verdict(MISSING, "the remote copy is missing")
    if remote_size != local_size:
        return Verdict(SIZE_MISMATCH,
                       f"the remote copy has {remote_size} bytes, the local file {local_size}")
    if remote_mtime != int(local_mtime):
        return Verdict(MTIME_MISMATCH, "the local file's mtime differs from its copy's")
    if check_md5 and not judge_copy(expected_md5, remote_md5).ok:
        return Verdict(MD5_MISMATCH,
                       f"the remote md5 is now {remote_md5}, expected {expected_md5}")
    return GOOD


def judge_audit(expected_md5: str, remote_size: int | None, local_size: int | None,
                remote_md5: str | None = None, check_md5: bool = False) -> Verdict:
    """What the audit finds about the remote copy of a file the catalog calls synced.

    ``local_size``: the local file's size when it can speak for the copy (a regular
    file not modified since its registration), else None and sizes are not compared.
    """
    if remote_size is None:
        return Verdict(MISSING, "no such file on the remote")
    if local_size is not None and remote_size != local_size:
        return Verdict(SIZE_MISMATCH,
                       f"remote copy has {remote_size} bytes, the local file {local_size}")
    if check_md5 and remote_md5 is None:
        return Verdict(MD5_MISMATCH, "the remote md5 could not be computed")
    if check_md5 and not judge_copy(expected_md5, remote_md5).ok:
        return Verdict(MD5_MISMATCH, f"remote md5 {remote_md5}, catalog {expected_md5}")
    return GOOD
