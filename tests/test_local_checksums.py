"""md5s of files on a local destination: in the calling thread or in a pool, the same."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from helpers import md5

from suprsync.transport import TransferOptions, local


def _tree(root: Path) -> dict[str, str]:
    """Three regular files, a symlink to one and a directory; {rel: md5} of the files."""
    expected = {}
    for i in range(3):
        path = root / "16000" / f"f{i}.g3"
        path.parent.mkdir(parents=True, exist_ok=True)
        data = f"content {i}\n".encode() * (i + 1)
        path.write_bytes(data)
        expected[path.relative_to(root).as_posix()] = md5(data)
    os.symlink(root / "16000" / "f0.g3", root / "16000" / "link.g3")
    (root / "16000" / "dir.g3").mkdir()
    return expected


@pytest.mark.parametrize("inline_limit", [1 << 20, 0])
def test_checksums_of_regular_files_only(tmp_path: Path, inline_limit: int,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local, "INLINE_HASH_BYTES", inline_limit)
    expected = _tree(tmp_path)
    transport = local.LocalTransport(str(tmp_path), TransferOptions())
    asked = [*expected, "16000/link.g3", "16000/dir.g3", "16000/missing.g3"]
    started: list[str] = []
    real_start = threading.Thread.start

    def start(thread: threading.Thread) -> None:
        started.append(thread.name)
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    assert transport.checksums(asked, total_bytes=100) == expected
    # A few small files are hashed in the calling thread; above the limit, by a pool.
    assert (started == []) == (inline_limit > 0)
