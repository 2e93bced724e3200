"""Index hints for sqlite: ``select(...).with_hint(table, "INDEXED BY ix", "sqlite")``.

SQLAlchemy's sqlite dialect drops FROM hints; this renders them after the table
name, where sqlite takes ``INDEXED BY``. Other dialects are not affected.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler

#: Read an archive's unsynced rows through the partial index. Without statistics the
#: planner may take another index on the archive name and walk every row of it.
UNSYNCED_ROWS = "INDEXED BY ix_suprsync_unsynced"


@compiles(Table, "sqlite")
def _table_with_hint(element: Table, compiler: SQLCompiler, **kw: Any) -> str:
    text = compiler.visit_table(element, **kw)
    hints = kw.get("fromhints")
    if hints and element in hints and not kw.get("ashint"):
        text += " " + hints[element]
    return text
