"""Small named values suprsync keeps in the catalog, and the deletion rules agents publish."""

from __future__ import annotations

import math

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from .inserts import insert_missing
from .schema import CatalogMeta

#: Meta key prefix: the --delete-local-after an archive's agent runs with.
DELETE_RULE_PREFIX = "delete_after:"
NEVER = "never"


def get_meta(session: Session, key: str) -> str | None:
    """The value stored under key, or None."""
    return session.scalar(select(CatalogMeta.value).where(CatalogMeta.key == key))


def set_meta(session: Session, key: str, value: str | None) -> None:
    """Store value under key (replacing what was there)."""
    insert_missing(session, CatalogMeta.__table__, [{"key": key, "value": value}])
    session.execute(update(CatalogMeta).where(CatalogMeta.key == key).values(value=value))


def publish_delete_rule(session: Session, archive_name: str, delete_after: float | None) -> None:
    """Record after how many seconds this archive's agent deletes verified files (None: never)."""
    value = NEVER if delete_after is None else repr(float(delete_after))
    if get_meta(session, DELETE_RULE_PREFIX + archive_name) != value:
        set_meta(session, DELETE_RULE_PREFIX + archive_name, value)


def delete_rules(session: Session, archives: list[str]) -> dict[str, float | None]:
    """Published delete_after per archive; an archive that published none is absent."""
    keys = {DELETE_RULE_PREFIX + a: a for a in archives}
    if not keys:
        return {}
    rules: dict[str, float | None] = {}
    for key, value in session.execute(select(CatalogMeta.key, CatalogMeta.value)
                                      .where(CatalogMeta.key.in_(list(keys)))):
        try:
            seconds = None if value == NEVER else float(value)
        except (TypeError, ValueError):
            continue
        if seconds is not None and not math.isfinite(seconds):
            continue
        rules[keys[key]] = seconds
    return rules
