"""Index hints for sqlite: ``select(...).with_hint(table, "INDEXED BY ix", "sqlite")``.

SQLAlchemy's sqlite dialect drops FROM hints; this renders them after the table
name, where sqlite takes ``INDEXED BY``, but only for an index the catalog has
(:func:`note_indexes`): sqlite refuses a statement that names a missing one, and
catalogs opened without creating suprsync's indexes lack them. Other dialects are
not affected.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler

#: Read an archive's unsynced rows through the partial index. Without statistics the
#: planner may take another index on the archive name and walk every row of it.
UNSYNCED_ROWS = "INDEXED BY ix_suprsync_unsynced"


def note_indexes(dialect: Any, names: set[str]) -> None:
    """Remember the indexes of the catalog behind this engine's dialect (its own)."""
    dialect.suprsync_indexes = frozenset(names)


@compiles(Table, "sqlite")
def _table_with_hint(element: Table, compiler: SQLCompiler, **kw: Any) -> str:
    text = compiler.visit_table(element, **kw)
    hints = kw.get("fromhints")
    if hints and element in hints and not kw.get("ashint"):
        hint = hints[element]
        if hint.rsplit(" ", 1)[-1] in getattr(compiler.dialect, "suprsync_indexes", ()):
            text += " " + hint
    return text
