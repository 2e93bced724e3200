"""The throwaway PostgreSQL cluster of the tests, reused by the benchmarks.

The server code lives in ``tests/pg_server.py``; it is loaded here by file path, as
``benchmarks/sshd.py`` loads the sshd. The cluster gets its own directory in /tmp
(mode 0755): when we are root the server runs as user postgres, who must reach it.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .sshd import load_test_module

_pg_server = load_test_module("pg_server")


@dataclass
class BenchPg:
    """A running cluster and the directory it lives in."""

    server: Any
    base: Path

    def psql(self, sql: str, database: str = "postgres") -> str:
        return self.server.psql(sql, database)

    def url(self, database: str) -> str:
        return self.server.url(database)

    def stop(self) -> None:
        self.server.stop()
        shutil.rmtree(self.base, ignore_errors=True)


def start_pg() -> BenchPg:
    """initdb and start a cluster on a free port of 127.0.0.1."""
    base = Path(tempfile.mkdtemp(prefix="suprsync-bench-pg-"))
    base.chmod(0o755)
    try:
        return BenchPg(_pg_server.start_pg(base / "cluster"), base)
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise
