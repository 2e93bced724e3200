"""The differences between SQLite and PostgreSQL catalogs, in one object per backend.

The object is chosen when the catalog opens (``SupRsyncFilesManager.dialect``, or
:func:`dialect_of` for a session); the rest of the catalog asks it for claims,
locks, bulk inserts, bytewise ordering, sequences and planner hints, and never
looks at the backend's name. This is the only module that does.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table, func, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.compiler import SQLCompiler

#: How a catalog counts deletions of file rows (see filecount.py): exactly, by the
#: triggers suprsync adds; or roughly, by the server's statistics.
TRIGGERS = "triggers"
STATISTICS = "statistics"

#: Read an archive's unsynced rows through the partial index. Without statistics the
#: planner may take another index on the archive name and walk every row of it.
UNSYNCED_ROWS = "INDEXED BY ix_suprsync_unverified"
#: An index a hint names, and the one it falls back to where the catalog lacks it.
_HINT_FALLBACK = {"ix_suprsync_unverified": "ix_suprsync_unsynced"}
VERIFIED_PRESENT_ROWS = "INDEXED BY ix_suprsync_verified_present"


def plain_insert_sql(table: Table, columns: Sequence[str]) -> str:
    """``INSERT INTO table (columns) VALUES (?, ...)`` for a DB-API connection."""
    return (f"INSERT INTO {table.name} ({', '.join(columns)}) "
            f"VALUES ({', '.join('?' for _ in columns)})")


#: PostgreSQL's SQLSTATE for a lock not had within ``lock_timeout``.
LOCK_TIMEOUT = "55P03"


class CatalogDialect:
    """A backend with none of the special features (generic SQL)."""

    name = "default"
    #: The database is one local file (WAL mode, busy timeouts, a path that can vanish).
    one_file = False
    #: A transaction's first write takes the one write lock: writers never interleave.
    serializes_writers = False
    #: A prefix LIKE is an index range (PostgreSQL's text_pattern_ops index).
    prefix_like_uses_index = True
    #: Lists of keys are passed as arrays (unnest) rather than JSON text (json_each).
    array_parameters = False
    #: The SQL functions typeof() and those suprsync registers on each connection exist.
    typeof_checks = False
    #: json_each() may exist (it is tried before use).
    json_each = False
    #: How deletions of file rows are counted: TRIGGERS, STATISTICS or None.
    deletion_mark: str | None = None
    #: DDL on a DB-API connection opens a transaction that must be committed.
    transactional_ddl = True
    #: The partial index of unsynced rows this backend makes (see schema.UNSYNCED_INDEXES;
    #: sqlite catalogs made before ix_suprsync_unverified keep their ix_suprsync_unsynced).
    unsynced_index = "ix_suprsync_unsynced"

    def insert_ignoring_duplicates(self, table: Table) -> Any:
        """An INSERT that skips rows whose primary key exists (also inserted meanwhile)."""
        return table.insert()

    def insert_returning_id(self, conn: Connection, table: Table,
                            values: dict[str, Any]) -> int:
        """Insert one row; its id."""
        return int(conn.execute(table.insert(), values).inserted_primary_key[0])

    def claim(self, query: Any, of: Any) -> Any:
        """The selection of files to claim, skipping rows others are claiming now."""
        return query

    #: Rows commit in the order of their ids (no row below the highest id can appear later).
    ids_commit_in_order = True
    #: The id of a deleted highest row can be given to a new row (sqlite's rowid without
    #: AUTOINCREMENT, which the original schema has).
    reuses_ids = True

    def insert_claims(self, session: Session, table: Table,
                      leases: list[dict[str, Any]], key: tuple[str, ...] = ("file_id",)
                      ) -> set[int]:
        """Insert leases (``key``: the table's primary key); the file ids whose lease
        was inserted."""
        session.execute(table.insert(), leases)
        return {lease["file_id"] for lease in leases}

    def lock_archive_dirs(self, session: Session, archive_name: str) -> None:
        """Keep other transactions from creating this archive's dir rows until commit."""

    def lock_named(self, session: Session, name: str) -> None:
        """Hold the lock called ``name`` until commit (sqlite: its one write lock, taken
        by the transaction's first write)."""

    def freeze_registrations(self, session: Session, table: Table,
                             wait: float | None = None) -> None:
        """Wait for registrations in flight and hold new ones until commit; with
        ``wait``, give up (an error) after that many seconds."""

    def bytewise(self, column: Any) -> Any:
        """The column, ordered bytewise."""
        return column

    def reset_sequence(self, engine: Engine, table_name: str) -> None:
        """After inserting explicit ids, let the id sequence continue after them."""

    def note_indexes(self, engine: Engine) -> None:
        """Read which indexes the catalog has (index hints name only those)."""

    def configure_connection(self, dbapi_conn: Any) -> None:
        """Settings for a new connection of a server catalog's engine."""


class SqliteDialect(CatalogDialect):
    """An sqlite file: one writer at a time, index hints, exact deletion counting."""

    name = "sqlite"
    one_file = True
    serializes_writers = True
    prefix_like_uses_index = False
    typeof_checks = True
    json_each = True
    unsynced_index = "ix_suprsync_unverified"
    deletion_mark = TRIGGERS
    transactional_ddl = False

    def insert_ignoring_duplicates(self, table: Table) -> Any:
        return sqlite_insert(table).on_conflict_do_nothing()

    def insert_returning_id(self, conn: Connection, table: Table,
                            values: dict[str, Any]) -> int:
        # The DB-API statement, not SQLAlchemy's: the hot path of single registrations.
        sql = plain_insert_sql(table, list(values))
        return int(conn.exec_driver_sql(sql, tuple(values.values())).lastrowid)

    def note_indexes(self, engine: Engine) -> None:
        with engine.connect() as conn:
            names = set(conn.exec_driver_sql(
                "SELECT name FROM sqlite_master WHERE type = 'index'").scalars())
        engine.dialect.suprsync_indexes = frozenset(names)


class PostgresDialect(CatalogDialect):
    """A PostgreSQL server: row locks, advisory locks, sequences, C collation."""

    name = "postgresql"
    array_parameters = True
    deletion_mark = STATISTICS

    def insert_ignoring_duplicates(self, table: Table) -> Any:
        return pg_insert(table).on_conflict_do_nothing()

    def claim(self, query: Any, of: Any) -> Any:
        return query.with_for_update(skip_locked=True, of=of)

    ids_commit_in_order = False
    reuses_ids = False  # a sequence never gives an id twice

    def insert_claims(self, session: Session, table: Table,
                      leases: list[dict[str, Any]], key: tuple[str, ...] = ("file_id",)
                      ) -> set[int]:
        # A claim committed after the selecting query's snapshot is invisible to its
        # NOT EXISTS while its files are no longer locked: keep only the leases inserted.
        return set(session.scalars(
            pg_insert(table).on_conflict_do_nothing(index_elements=list(key))
            .returning(table.c.file_id), leases))

    def lock_named(self, session: Session, name: str) -> None:
        session.execute(select(func.pg_advisory_xact_lock(func.hashtext(f"suprsync {name}"))))

    def lock_archive_dirs(self, session: Session, archive_name: str) -> None:
        # The table has no unique key on (archive, timecode); without this lock, two
        # agents detecting the same new dir at once would both insert it.
        session.execute(select(func.pg_advisory_xact_lock(
            func.hashtext(f"suprsync timecode dirs {archive_name}"))))

    def freeze_registrations(self, session: Session, table: Table,
                             wait: float | None = None) -> None:
        # Ids are handed out before a row commits, so a row can commit after rows with
        # higher ids; under this lock the rows below a bound are all there is.
        if wait is not None:
            session.execute(text(f"SET LOCAL lock_timeout = '{max(1, int(wait * 1000))}ms'"))
        session.execute(text(f"LOCK TABLE {table.name} IN SHARE ROW EXCLUSIVE MODE"))

    def bytewise(self, column: Any) -> Any:
        return column.collate("C")

    def configure_connection(self, dbapi_conn: Any) -> None:
        # The catalog's queries are short index lookups whose costs PostgreSQL
        # overestimates when they range over parameters (the collision lookup of a
        # batch: 500 ranges it cannot see into). Above jit_above_cost it compiled them
        # first: 5 to 25 ms for a lookup that runs in 0.3 ms at 1,000,000 rows.
        if dbapi_conn.info.server_version < 110000:  # no JIT before PostgreSQL 11
            return
        cur = dbapi_conn.cursor()
        try:
            cur.execute("SET jit = off")
        finally:
            cur.close()
        dbapi_conn.commit()

    def reset_sequence(self, engine: Engine, table_name: str) -> None:
        with engine.begin() as conn:
            conn.execute(text(
                f"SELECT setval(pg_get_serial_sequence('{table_name}', 'id'), "
                f"COALESCE((SELECT MAX(id) FROM {table_name}), 0) + 1, false)"))


_DIALECTS: dict[str, CatalogDialect] = {d.name: d for d in (SqliteDialect(),
                                                            PostgresDialect())}
_DEFAULT = CatalogDialect()


def dialect_named(name: str) -> CatalogDialect:
    """The dialect of a backend name (a generic one for other backends)."""
    return _DIALECTS.get(name, _DEFAULT)


def dialect_for(bind: Engine | Connection | Any) -> CatalogDialect:
    """The dialect of an engine, a connection or an SQLAlchemy dialect."""
    return dialect_named(getattr(bind, "dialect", bind).name)


def dialect_of(session: Session) -> CatalogDialect:
    """The dialect of the catalog a session is bound to."""
    return dialect_for(session.get_bind())


def dialect_for_url(url: str | URL) -> CatalogDialect:
    """The dialect of an SQLAlchemy URL."""
    return dialect_named(make_url(url).get_backend_name())


def database_file(url: str | URL) -> str | None:
    """Absolute path of the catalog file of a URL whose database is one file, else None."""
    parsed = make_url(url)
    if (not dialect_for_url(parsed).one_file or not parsed.database
            or parsed.database == ":memory:"):
        return None
    return os.path.abspath(parsed.database)


def via_verified_present_index(query: Any, table: Any) -> Any:
    """The query, reading ``table`` through the partial index of verified local rows
    where the planner takes hints (sqlite); other backends render it unchanged."""
    return query.with_hint(table, VERIFIED_PRESENT_ROWS, SqliteDialect.name)


def via_unsynced_index(query: Any, table: Any) -> Any:
    """The query, reading ``table`` through the partial index of unsynced rows where the
    planner takes hints (sqlite); other backends render it unchanged."""
    return query.with_hint(table, UNSYNCED_ROWS, SqliteDialect.name)


@compiles(Table, SqliteDialect.name)
def _table_with_hint(element: Table, compiler: SQLCompiler, **kw: Any) -> str:
    # SQLAlchemy's sqlite dialect drops FROM hints; this renders them after the table
    # name, where sqlite takes INDEXED BY, but only for an index the catalog has
    # (note_indexes): sqlite refuses a statement that names a missing one, and
    # catalogs opened without creating suprsync's indexes lack them.
    sql = compiler.visit_table(element, **kw)
    hints = kw.get("fromhints")
    if hints and element in hints and not kw.get("ashint"):
        hint = hints[element]
        have = getattr(compiler.dialect, "suprsync_indexes", ())
        name = hint.rsplit(" ", 1)[-1]
        if name not in have and _HINT_FALLBACK.get(name) in have:
            name = _HINT_FALLBACK[name]
            hint = hint.rsplit(" ", 1)[0] + " " + name
        if name in have:
            sql += " " + hint
    return sql
