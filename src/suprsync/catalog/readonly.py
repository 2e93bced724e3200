"""Reading a catalog that lacks suprsync's extra tables, without adding them.

A catalog only the original agent wrote has `supersync_v0` and
`timecode_dirs_v0` alone. Read-only commands (stats, status, list, audit,
retention) must leave it as it is, yet their queries also read suprsync's own
tables (conflicts, meta, local dirs, ...). Each connection of such a catalog
gets an empty temporary table of the same name for each one missing: queries
see "nothing recorded", and whatever they would write stays in the connection
and vanishes with it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event, inspect
from sqlalchemy.schema import CreateTable

from .schema import FILES_TABLE, TIMECODE_TABLE, Base


def missing_extra_tables(engine: Any) -> list[str]:
    """suprsync's extra tables that the catalog lacks."""
    present = set(inspect(engine).get_table_names())
    return [name for name in Base.metadata.tables
            if name not in (FILES_TABLE, TIMECODE_TABLE) and name not in present]


def shadow_missing_tables(engine: Any) -> list[str]:
    """Stand in empty temporary tables for the missing extra tables; return their names."""
    missing = missing_extra_tables(engine)
    if not missing:
        return []
    dialect = engine.dialect
    statements = [str(CreateTable(Base.metadata.tables[name]).compile(dialect=dialect))
                  .replace("CREATE TABLE", "CREATE TEMPORARY TABLE", 1) for name in missing]

    @event.listens_for(engine, "connect")
    def create(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            for statement in statements:
                cursor.execute(statement)
        finally:
            cursor.close()
        if dialect.name != "sqlite":
            dbapi_connection.commit()

    engine.dispose()  # connections opened before have no stand-ins
    return missing
