"""Copying a whole catalog to another database (for example sqlite to PostgreSQL)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from .dialects import dialect_for
from .schema import SupRsyncFile, TimecodeDir
from .store import SupRsyncFilesManager

log = logging.getLogger(__name__)

#: Rows copied per transaction.
BATCH = 5000

Progress = Callable[[str, int, int], None]


class MigrationError(RuntimeError):
    """The destination is not empty, or the copy did not match."""


def _count(engine: Engine, table) -> int:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(table)) or 0)


def migrate(source: str, destination: str, progress: Progress | None = None) -> dict[str, int]:
    """Copy every row of both tables, ids included; return rows copied per table.

    The destination gets the schema (and indexes) first and must hold no rows.
    Rows are read in id order in batches, so memory stays bounded.
    """
    src = SupRsyncFilesManager(source, create_all=False)
    dst = SupRsyncFilesManager(destination, create_all=True)
    copied: dict[str, int] = {}
    try:
        for model in (SupRsyncFile, TimecodeDir):
            table = model.__table__
            if _count(dst.engine, table) > 0:
                raise MigrationError(f"destination table {table.name} is not empty")
        for model in (SupRsyncFile, TimecodeDir):
            table = model.__table__
            total = _count(src.engine, table)
            done = 0
            last_id = 0
            columns = [c.name for c in table.columns]
            while True:
                with src.engine.connect() as conn:
                    rows = conn.execute(select(table).where(table.c.id > last_id)
                                        .order_by(table.c.id).limit(BATCH)).mappings().all()
                if not rows:
                    break
                with dst.engine.begin() as conn:
                    conn.execute(table.insert(), [{c: row[c] for c in columns} for row in rows])
                last_id = rows[-1]["id"]
                done += len(rows)
                if progress is not None:
                    progress(table.name, done, total)
            copied[table.name] = done
            if _count(dst.engine, table) != total:
                raise MigrationError(f"{table.name}: copied {done} of {total} rows")
            dialect_for(dst.engine).reset_sequence(dst.engine, table.name)
            log.info("migrated %d rows of %s", done, table.name)
    finally:
        src.close()
        dst.close()
    return copied
