"""Small named values suprsync keeps in the catalog, and the retention policies agents publish."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from .inserts import insert_missing
from .schema import CatalogMeta
from .settings import FILES_TABLE

#: Meta key prefix: the retention policy an archive's agent runs with.
DELETE_RULE_PREFIX = "delete_after:"
#: Meta key prefix: the file systems an archive's agent last found below --min-free (JSON).
DISK_PRESSURE_PREFIX = "disk_pressure:"


def get_meta(session: Session, key: str) -> str | None:
    """The value stored under key, or None."""
    return session.scalar(select(CatalogMeta.value).where(CatalogMeta.key == key))


def set_meta(session: Session, key: str, value: str | None) -> None:
    """Store value under key (replacing what was there)."""
    insert_missing(session, CatalogMeta.__table__, [{"key": key, "value": value}])
    session.execute(update(CatalogMeta).where(CatalogMeta.key == key).values(value=value))


def install_counter(session: Session, key: str, triggers: dict[str, str]) -> None:
    """Create a count under key (0) and the sqlite triggers on the files table that
    keep it (name -> CREATE statement), those missing."""
    if get_meta(session, key) is None:
        set_meta(session, key, "0")
    names = set(session.scalars(text(
        "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = :t"),
        {"t": FILES_TABLE}))
    for name, statement in triggers.items():
        if name not in names:
            session.execute(text(statement))


def publish_policy(session: Session, archive_name: str, text: str) -> None:
    """Record the retention policy of this archive's agent, as text (see retention.py)."""
    if get_meta(session, DELETE_RULE_PREFIX + archive_name) != text:
        set_meta(session, DELETE_RULE_PREFIX + archive_name, text)


def publish_disk_pressure(session: Session, archive_name: str, data: dict[str, Any]) -> None:
    """Record the file systems this archive's agent finds short of free space."""
    set_meta(session, DISK_PRESSURE_PREFIX + archive_name, json.dumps(data, sort_keys=True))


def disk_pressure(session: Session, archive_name: str) -> dict[str, Any] | None:
    """What publish_disk_pressure recorded for the archive, or None."""
    text = get_meta(session, DISK_PRESSURE_PREFIX + archive_name)
    try:
        data = json.loads(text) if text else None
    except ValueError:
        return None
    return data if isinstance(data, dict) else None
