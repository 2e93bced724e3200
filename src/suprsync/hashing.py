"""md5 checksums of local files."""

from __future__ import annotations

import hashlib

CHUNK = 1 << 20


def md5_file(path: str) -> str:
    """Hex md5 of a file's content."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
