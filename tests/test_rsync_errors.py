"""Which rsync messages blame the destination and which blame one file (pure logic)."""

from __future__ import annotations

import pytest

from suprsync.transport.rsync_errors import destination_failure

DESTINATION = [
    # base dir on a read-only file system
    ('rsync: [generator] failed to set permissions on "/b/.": Read-only file system (30)\n'
     'rsync: [receiver] mkstemp "/b/.y.9TOAyT" failed: Read-only file system (30)\n'
     'rsync error: some files/attrs were not transferred (see previous errors) (code 23)',
     'failed to set permissions on "/b/.": Read-only file system'),
    ('rsync: [generator] recv_generator: mkdir "/b/16750" failed: Read-only file system (30)\n'
     '*** Skipping any contents from this failed directory ***',
     'recv_generator: mkdir "/b/16750" failed: Read-only file system'),
    # no space, no inodes, over quota
    ('rsync: [receiver] mkstemp "/b/a/.x.OHnK2V" failed: No space left on device (28)',
     'mkstemp "/b/a/.x.OHnK2V" failed: No space left on device'),
    ('rsync: [receiver] write failed on "/b/a/x": No space left on device (28)',
     'write failed on "/b/a/x": No space left on device'),
    ('rsync: [receiver] write failed on "/b/x": Disk quota exceeded (122)',
     'write failed on "/b/x": Disk quota exceeded'),
    # a directory the user may not write
    ('rsync: [receiver] mkstemp "/b/.x.abc" failed: Permission denied (13)',
     'mkstemp "/b/.x.abc" failed: Permission denied'),
    ('rsync: [generator] recv_generator: mkdir "/b/16750" failed: Permission denied (13)',
     'recv_generator: mkdir "/b/16750" failed: Permission denied'),
    ('rsync: [receiver] rename "/b/.x.abc" -> "x": Operation not permitted (1)',
     'rename "/b/.x.abc" -> "x": Operation not permitted'),
    # an NFS destination gone bad
    ('rsync: [receiver] mkstemp "/nfs/.x.abc" failed: Stale file handle (116)',
     'mkstemp "/nfs/.x.abc" failed: Stale file handle'),
    ('rsync: [receiver] write failed on "/b/x": Input/output error (5)',
     'write failed on "/b/x": Input/output error'),
    # older rsync names no role
    ('rsync: mkstemp "/b/.x.abc" failed: Permission denied (13)',
     'mkstemp "/b/.x.abc" failed: Permission denied'),
    # a per-file message first, then the destination's: the destination is blamed
    ('rsync: [sender] link_stat "/s/gone" failed: No such file or directory (2)\n'
     'rsync: [receiver] mkstemp "/b/.y.abc" failed: Read-only file system (30)',
     'mkstemp "/b/.y.abc" failed: Read-only file system'),
    (b'rsync: [receiver] mkstemp "/b/\xff.abc" failed: Read-only file system (30)\n',
     'mkstemp "/b/\ufffd.abc" failed: Read-only file system'),
]

ONE_FILE = [
    # the local file vanished, or cannot be read
    'rsync: [sender] link_stat "/s/16750/x" failed: No such file or directory (2)',
    'rsync: [sender] send_files failed to open "/s/x": Permission denied (13)',
    'rsync: send_files failed to open "/s/x": Permission denied (13)',
    'rsync: [sender] read errors mapping "/s/x": Input/output error (5)',
    'rsync: link_stat "/s/x" failed: No such file or directory (2)',
    # a name the destination refuses, or something in its way
    'rsync: [receiver] mkstemp "/b/.nnnn.abc" failed: File name too long (36)',
    'rsync: [receiver] mkstemp "/b/.x.abc" failed: Invalid or incomplete multibyte or wide '
    'character (84)',
    'rsync: [receiver] mkstemp "/b/.a:b.abc" failed: Invalid argument (22)',
    'cannot delete non-empty directory: 16750/x\ncould not make way for new regular file: '
    '16750/x',
    # attributes only: the files were written
    'rsync: [generator] failed to set times on "/b/.": Operation not permitted (1)',
    'rsync: [generator] failed to set permissions on "/b/x": Operation not permitted (1)',
    # nothing rsync explained
    'rsync error: some files/attrs were not transferred (see previous errors) (code 23)',
    '',
]


@pytest.mark.parametrize(("stderr", "reason"), DESTINATION)
def test_messages_that_blame_the_destination(stderr: str | bytes, reason: str) -> None:
    assert destination_failure(stderr) == reason


@pytest.mark.parametrize("stderr", ONE_FILE)
def test_messages_that_blame_one_file_or_nothing(stderr: str) -> None:
    assert destination_failure(stderr) is None
    assert destination_failure(stderr.encode()) is None
