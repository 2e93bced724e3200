"""Reading a sqlite catalog with the standard library alone, before SQLAlchemy is loaded."""

from __future__ import annotations

import os
import sqlite3
import urllib.parse

from .settings import BUSY_TIMEOUT, FILES_TABLE


def known_local_paths(path: str, archive_name: str) -> set[str]:
    """Local paths registered in one archive of the sqlite catalog at path.

    A catalog that does not exist yet, or has no files table yet, has none.
    The file is opened read-only: nothing is created or changed.
    """
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.exists(path):
        return set()
    uri = f"file:{urllib.parse.quote(os.fsencode(path))}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT)
    # Other programs' rows may hold bytes that are not UTF-8: read them, do not fail.
    conn.text_factory = lambda raw: raw.decode("utf-8", "surrogateescape")
    try:
        rows = conn.execute(f"SELECT local_path FROM {FILES_TABLE} WHERE archive_name = ?",
                            (archive_name,))
        return {row[0] for row in rows}
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return set()
        raise
    finally:
        conn.close()
