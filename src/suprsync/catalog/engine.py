"""Opening a catalog: engine, connection settings, and waiting out a busy database."""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import OperationalError

from .dialects import database_file, dialect_for_url
from .quarantine import register_sqlite_functions
from .settings import BUSY_TIMEOUT

log = logging.getLogger(__name__)

T = TypeVar("T")


class CatalogBusy(RuntimeError):
    """The catalog stayed locked by other writers for longer than we wait."""


def catalog_url(db: str) -> str:
    """An SQLAlchemy URL for a catalog given as a URL or as an sqlite file path.

    ``postgresql://`` URLs use the psycopg (3) driver.
    """
    if "://" not in db:
        return f"sqlite:///{os.path.abspath(os.path.expanduser(db))}"
    for prefix in ("postgresql://", "postgres://"):
        if db.startswith(prefix):
            return "postgresql+psycopg://" + db[len(prefix):]
    return db


def make_engine(
    db: str, echo: bool = False, pool_size: int = 5, max_overflow: int = 10
) -> Engine:
    """Create the engine; for sqlite, WAL mode and a busy timeout on every connection."""
    url = catalog_url(db)
    dialect = dialect_for_url(url)
    if not dialect.one_file:
        server = create_engine(url, echo=echo, pool_size=pool_size,
                               max_overflow=max_overflow, pool_pre_ping=True)
        event.listen(server, "connect",
                     lambda dbapi_conn, _record: dialect.configure_connection(dbapi_conn))
        return server
    path = database_file(url)
    if path:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    engine = create_engine(
        url,
        echo=echo,
        pool_size=pool_size,
        max_overflow=max_overflow,
        connect_args={"timeout": BUSY_TIMEOUT},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
        configure_sqlite(dbapi_conn)

    return engine


def configure_sqlite(conn: sqlite3.Connection) -> None:
    """A busy timeout on this connection, WAL mode, the quarantine check, no memory map.

    Text that is not valid UTF-8 is read with surrogate escapes instead of failing
    the query (see catalog.quarantine). With the catalog file mapped, a file
    truncated under the agent would kill it with SIGBUS; read with read(2), a
    damaged file is an error the agent reports.
    """
    register_sqlite_functions(conn)
    cur = conn.cursor()
    try:
        cur.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
        cur.execute("PRAGMA mmap_size = 0")
        mode = cur.execute("PRAGMA journal_mode").fetchone()[0]
        if str(mode).lower() != "wal":
            cur.execute("PRAGMA journal_mode=WAL")
    finally:
        cur.close()


def is_busy_error(exc: BaseException) -> bool:
    """True for SQLite's 'database is locked' / 'busy' errors."""
    if isinstance(exc, OperationalError):
        text = str(exc.orig if exc.orig is not None else exc).lower()
    elif isinstance(exc, sqlite3.OperationalError):
        text = str(exc).lower()
    else:
        return False
    return "locked" in text or "busy" in text


def retry_busy(
    fn: Callable[[], T], max_wait: float = 300.0, what: str = "catalog write",
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call fn, retrying while the catalog is locked by another writer."""
    deadline = time.monotonic() + max_wait
    delay = 0.05
    while True:
        try:
            return fn()
        except (OperationalError, sqlite3.OperationalError) as exc:
            if not is_busy_error(exc):
                raise
            if time.monotonic() >= deadline:
                raise CatalogBusy(f"{what}: catalog still locked after {max_wait:.0f} s") from exc
            log.info("%s: catalog is locked by another writer, waiting %.2f s", what, delay)
            sleep(delay)
            delay = min(delay * 2, 2.0)
