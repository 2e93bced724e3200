"""Inserting rows into suprsync's extra tables when another agent may insert them too."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table
from sqlalchemy.orm import Session

from .dialects import dialect_of


def insert_missing(session: Session, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """Insert rows, skipping those whose primary key exists (also when inserted meanwhile)."""
    if not rows:
        return
    session.execute(dialect_of(session).insert_ignoring_duplicates(table), list(rows))
