"""Putting a file back in the copy queue: the one way every path re-queues a file."""

from __future__ import annotations

from sqlalchemy.orm import Session

from .conflicts import pin
from .copies import forget_verifications
from .schema import SupRsyncFile


def requeue_row(session: Session, row: SupRsyncFile | None, observed_md5: str | None = None,
                local_md5: str | None = None, reset_attempts: bool = False) -> bool:
    """Forget the verification of a row so that its file is copied and verified again.

    ``observed_md5``: what the destination holds now; recording it makes the next
    copy re-send the file even if its size and mtime look current. ``local_md5``:
    the local file's new md5 (its bytes changed). A row verified until now that
    keeps its registered bytes gets its md5 pinned: the re-send accepts only those
    bytes. ``reset_attempts`` gives it its copy attempts back. A row that is gone or
    whose local file was removed is left alone (False).
    """
    if row is None or row.removed is not None:
        return False
    if row.is_synced and local_md5 in (None, row.local_md5sum):
        pin(session, [(row.id, row.local_md5sum)])
    if local_md5 is not None:
        row.local_md5sum = local_md5
        session.flush()
        # Copies of the old content at further destinations are no longer verified.
        forget_verifications(session, [row.id])
    row.remote_md5sum = observed_md5
    if reset_attempts:
        row.failed_copy_attempts = 0
    return True
