"""Quarantine: catalog rows the agent never touches, because their values make no sense.

Other programs write the catalog, and not every catalog has the NOT NULL
constraints of the schema. A row is *quarantined* when one of its values cannot
be what the column means: a NULL in a required column, text that is not valid
UTF-8 (or bytes stored where text belongs), a number stored as text, a timestamp
that is not a time (negative, past :data:`MAX_TIMESTAMP`, NaN, infinite), or a
local md5 that is not 32 hex digits. Such a row is never sent, never deleted and
never counted as synced; it is reported with its reason, and every other row is
handled as usual.

:func:`why_quarantined` is the rule. :data:`HEALTHY` and :data:`QUARANTINED` are
the same rule as SQL conditions, for the selection queries: on sqlite they test
the stored type of each value (``typeof()``), on PostgreSQL, where the column
types hold, the NULLs, the md5 format and the timestamp range. On sqlite the
content of the text (valid UTF-8, the md5's hex digits) is checked on the stored
bytes by the function :data:`TEXT_FUNCTION`, which :func:`register_sqlite_functions`
adds to every connection.
"""

from __future__ import annotations

import math
import re
import sqlite3
from collections.abc import Mapping
from functools import partial
from typing import Any

from sqlalchemy import Boolean, func, select, type_coerce
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.visitors import InternalTraversal
from sqlalchemy.types import NullType

from .dialects import dialect_for
from .schema import SupRsyncFile
from .settings import FILES_TABLE

#: Latest timestamp taken for a time: 2286-11-20, the last second whose timecode
#: (``int(t // 1e5)``) has five digits.
MAX_TIMESTAMP = 1e10

#: Columns that must hold a value.
REQUIRED = ("local_path", "local_md5sum", "archive_name", "remote_path", "timestamp")
#: Columns that hold text.
TEXT_COLUMNS = ("local_path", "local_md5sum", "archive_name", "remote_path", "remote_md5sum")
#: Columns that hold a number (or NULL) besides the timestamp.
NUMBER_COLUMNS = ("copied", "removed")
#: Columns that hold an integer or a boolean (or NULL).
INTEGER_COLUMNS = ("failed_copy_attempts", "deletable", "ignore")
#: Every column the rule looks at, in table order.
COLUMNS = ("local_path", "local_md5sum", "archive_name", "remote_path", "timestamp",
           "remote_md5sum", "copied", "removed", "failed_copy_attempts", "deletable", "ignore")

#: Quarantined rows listed by status and stats (the count is always exact).
LIST_LIMIT = 20

_MD5 = re.compile(r"[0-9a-fA-F]{32}")
_SHOWN = 80


def _shown(value: Any) -> str:
    """A value for a reason: its repr, cut to a readable length."""
    text = repr(value)
    return text if len(text) <= _SHOWN else text[:_SHOWN - 3] + "..."


def _raw_bytes(text: str) -> bytes:
    """The bytes a text value was read from (undecodable bytes read as surrogates)."""
    return text.encode("utf-8", "surrogateescape")


def _text_problem(column: str, value: Any) -> str | None:
    if isinstance(value, bytes):
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            return f"{column} is not valid UTF-8: {_shown(value)}"
        return f"{column} is stored as a BLOB, not as text: {_shown(value)}"
    if not isinstance(value, str):
        return f"{column} is a {type(value).__name__}, not text: {_shown(value)}"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return f"{column} is not valid UTF-8: {_shown(_raw_bytes(value))}"
    return None


def _is_number(value: Any) -> bool:
    return type(value) in (int, float)


def why_quarantined(row: Mapping[str, Any]) -> str | None:
    """Why this row must not be touched ('; '-separated), or None for a sound row.

    ``row`` maps column names to the values as stored: text as str (bytes that are
    not UTF-8 read as surrogate escapes), BLOBs as bytes, numbers as int or float.
    A missing key counts as NULL.
    """
    problems: list[str] = []
    for column in TEXT_COLUMNS:
        value = row.get(column)
        if value is None:
            if column in REQUIRED:
                problems.append(f"{column} is NULL")
            continue
        problem = _text_problem(column, value)
        if problem is not None:
            if column == "remote_path" and "UTF-8" in problem:
                problem += " (a name suprsync cannot copy faithfully)"
            problems.append(problem)
    local_path = row.get("local_path")
    if isinstance(local_path, str) and "\0" in local_path:
        problems.append(f"local_path contains a NUL byte: {_shown(local_path)}")
    md5 = row.get("local_md5sum")
    if isinstance(md5, str) and _text_problem("local_md5sum", md5) is None \
            and not _MD5.fullmatch(md5):
        problems.append(f"local_md5sum is not 32 hex digits: {_shown(md5)}")
    timestamp = row.get("timestamp")
    if timestamp is None:
        problems.append("timestamp is NULL")
    elif not _is_number(timestamp):
        problems.append(f"timestamp is not a number: {_shown(timestamp)}")
    elif not 0 <= timestamp <= MAX_TIMESTAMP:
        what = "not a number" if math.isnan(timestamp) else "not a time"
        problems.append(f"timestamp is {what} (0 to {MAX_TIMESTAMP:.0e}): {timestamp!r}")
    for column in NUMBER_COLUMNS:
        value = row.get(column)
        if value is not None and not _is_number(value):
            problems.append(f"{column} is not a number: {_shown(value)}")
    for column in INTEGER_COLUMNS:
        value = row.get(column)
        if value is not None and type(value) not in (int, bool):
            problems.append(f"{column} is not an integer: {_shown(value)}")
    return "; ".join(problems) if problems else None


def printable(value: Any) -> Any:
    """A value made safe to print or dump as JSON: bytes and undecodable text escaped."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return _raw_bytes(value).decode("utf-8", "backslashreplace")
    return value


def is_valid_text(value: Any) -> bool:
    """True for a str that is valid UTF-8 (what a query may bind)."""
    return isinstance(value, str) and _text_problem("", value) is None


# ------------------------------------------------------------------ sqlite

#: SQL functions (sqlite): whether a BLOB is valid UTF-8; whether a row's text is sound.
UTF8_FUNCTION = "suprsync_valid_utf8"
TEXT_FUNCTION = "suprsync_text_ok"

#: Reads TEXT values; bytes that are not UTF-8 become surrogate escapes, not an error.
decode_text = partial(str, encoding="utf-8", errors="surrogateescape")

_HEX_DIGITS = b"0123456789abcdefABCDEF"


def _valid_utf8(value: Any) -> int:
    if not isinstance(value, bytes):
        return 0
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return 0
    return 1


def _text_ok(local_path: Any, local_md5sum: Any, archive_name: Any, remote_path: Any,
             remote_md5sum: Any) -> int:
    """The text part of the rule, on the stored bytes (types are checked in SQL)."""
    try:
        if (len(local_md5sum) != 32 or local_md5sum.translate(None, _HEX_DIGITS)
                or b"\0" in local_path):
            return 0
        # An ASCII separator ends any partial sequence: the whole is UTF-8 iff each part is.
        joined = b"\0".join((local_path, archive_name, remote_path, remote_md5sum or b""))
        if not joined.isascii():
            joined.decode("utf-8")
    except (UnicodeDecodeError, TypeError, AttributeError):
        return 0
    return 1


def register_sqlite_functions(conn: sqlite3.Connection) -> None:
    """Make a connection read undecodable text, and give it the quarantine checks."""
    conn.text_factory = decode_text
    conn.create_function(UTF8_FUNCTION, 1, _valid_utf8, deterministic=True)
    conn.create_function(TEXT_FUNCTION, 5, _text_ok, deterministic=True)


def _sqlite_types(column: str, *types: str) -> str:
    listed = ", ".join(f"'{t}'" for t in types)
    return f"typeof({FILES_TABLE}.{column}) IN ({listed})"


def _sqlite_time(column: str = "timestamp") -> str:
    c = f"{FILES_TABLE}.{column}"
    return (f"{_sqlite_types(column, 'integer', 'real')} AND {c} >= 0 "
            f"AND {c} <= {MAX_TIMESTAMP:.1f}")


def _sqlite_healthy() -> str:
    # The cheap type tests come first: sqlite stops at the first false term, and the
    # Python function runs only for rows whose types are right.
    parts = [_sqlite_types(c, "text") for c in REQUIRED if c != "timestamp"]
    parts += [_sqlite_types("remote_md5sum", "null", "text"), _sqlite_time()]
    parts += [_sqlite_types(c, "null", "integer", "real") for c in NUMBER_COLUMNS]
    parts += [_sqlite_types(c, "null", "integer") for c in INTEGER_COLUMNS]
    blobs = ", ".join(f"CAST({FILES_TABLE}.{c} AS BLOB)" for c in TEXT_COLUMNS)
    parts.append(f"{TEXT_FUNCTION}({blobs}) = 1")
    return " AND ".join(f"({p})" for p in parts)


def _generic_healthy() -> str:
    t = FILES_TABLE
    parts = [f"{t}.{c} IS NOT NULL" for c in REQUIRED]
    parts += [
        f"{t}.local_md5sum ~ '^[0-9a-fA-F]{{32}}$'",
        f"{t}.timestamp >= 0",
        f"{t}.timestamp <= {MAX_TIMESTAMP:.1f}",
    ]
    return " AND ".join(f"({p})" for p in parts)


#: The rules' SQL: with typeof() and the registered functions (sqlite), and without.
_SQL = {
    "typeof": {
        "healthy": _sqlite_healthy(),
        "archive_ok": (f"{_sqlite_types('archive_name', 'text')} AND "
                       f"{UTF8_FUNCTION}(CAST({FILES_TABLE}.archive_name AS BLOB)) = 1"),
        "time_ok": _sqlite_time(),
        "copied_ok": _sqlite_time("copied"),
    },
    "default": {
        "healthy": _generic_healthy(),
        "archive_ok": f"{FILES_TABLE}.archive_name IS NOT NULL",
        "time_ok": " AND ".join(f"({p})" for p in (
            f"{FILES_TABLE}.timestamp IS NOT NULL", f"{FILES_TABLE}.timestamp >= 0",
            f"{FILES_TABLE}.timestamp <= {MAX_TIMESTAMP:.1f}")),
        "copied_ok": (f"{FILES_TABLE}.copied >= 0 AND "
                      f"{FILES_TABLE}.copied <= {MAX_TIMESTAMP:.1f}"),
    },
}


class _Rule(ColumnElement[bool]):
    """One of the conditions of _SQL, possibly negated.

    ``healthy`` and ``archive_ok`` never evaluate to NULL, so their negations hold
    exactly for the other rows.
    """

    inherit_cache = True
    type = Boolean()
    _traverse_internals = [("key", InternalTraversal.dp_string),
                           ("negate", InternalTraversal.dp_boolean)]

    def __init__(self, key: str, negate: bool = False) -> None:
        self.key = key
        self.negate = negate


@compiles(_Rule)
def _compile_rule(element: _Rule, compiler: Any, **_kw: Any) -> str:
    rules = _SQL["typeof" if dialect_for(compiler.dialect).typeof_checks else "default"]
    sql = rules[element.key]
    return f"(NOT ({sql}))" if element.negate else f"({sql})"


#: SQL condition: the row is sound (why_quarantined gives None).
HEALTHY = _Rule("healthy")
#: SQL condition: the row is quarantined.
QUARANTINED = _Rule("healthy", negate=True)
#: SQL condition: the archive name is NULL or not valid text (the row is in no archive).
NO_ARCHIVE = _Rule("archive_ok", negate=True)
#: SQL condition: ``copied`` is a time (a number from 0 to MAX_TIMESTAMP).
COPIED_IS_TIME = _Rule("copied_ok")
#: SQL condition: the timestamp is a time (a number from 0 to MAX_TIMESTAMP).
TIME_OK = _Rule("time_ok")


# ------------------------------------------------------------------ queries


def _raw_columns() -> list[Any]:
    """The rule's columns, read as stored (no type conversion by SQLAlchemy)."""
    table = SupRsyncFile.__table__
    return [table.c.id, *(type_coerce(table.c[name], NullType()).label(name)
                          for name in COLUMNS)]


def raw_rows_query(*conditions: Any):  # type: ignore[no-untyped-def]
    """SELECT of id and the rule's columns as stored, where every condition holds."""
    return select(*_raw_columns()).where(*conditions).order_by(SupRsyncFile.id)


def quarantined_rows(session: Session, *conditions: Any,
                     limit: int | None = None) -> list[dict[str, Any]]:
    """[{id, reason}] of the quarantined rows that meet the conditions, by id."""
    query = raw_rows_query(QUARANTINED, *conditions)
    if limit is not None:
        query = query.limit(limit)
    found = []
    for row in session.execute(query):
        values = row._mapping
        found.append({"id": int(values["id"]),
                      "reason": why_quarantined(values) or "rejected by the catalog's SQL check"})
    return found


def quarantine_summary(session: Session, archive_name: str,
                       limit: int = LIST_LIMIT) -> dict[str, Any]:
    """{'quarantined': count, 'quarantined_rows': first rows as [{id, reason}]} of an archive."""
    in_archive = SupRsyncFile.archive_name == archive_name

    def count(*conditions: Any) -> int:
        return int(session.scalar(select(func.count()).select_from(SupRsyncFile)
                                  .where(in_archive, *conditions)) or 0)

    # All rows minus the sound ones: sqlite checks a row fastest the positive way.
    quarantined = count() - count(HEALTHY)
    rows = quarantined_rows(session, in_archive, limit=limit) if quarantined else []
    return {"quarantined": quarantined, "quarantined_rows": rows}


def homeless_rows(session: Session, limit: int = LIST_LIMIT) -> dict[str, Any]:
    """{'quarantined': count, 'quarantined_rows': [{id, reason}]} of the rows in no archive.

    Their archive name is NULL, a BLOB or not UTF-8, so no archive's report shows them.
    """
    count = int(session.scalar(select(func.count()).select_from(SupRsyncFile)
                               .where(NO_ARCHIVE)) or 0)
    rows = quarantined_rows(session, NO_ARCHIVE, limit=limit) if count else []
    return {"quarantined": count, "quarantined_rows": rows}
