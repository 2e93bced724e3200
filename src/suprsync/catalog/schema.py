"""The two catalog tables, column for column as the original agent created them, and the
extra tables of suprsync that other programs ignore."""

from __future__ import annotations

from sqlalchemy import Boolean, Column, Float, ForeignKey, Index, Integer, String, and_, or_
from sqlalchemy.orm import declarative_base

from .settings import FILES_TABLE, TABLE_VERSION, TIMECODE_TABLE

Base = declarative_base()


class TimecodeDir(Base):
    """A timecode directory of one archive and its completion state."""

    __tablename__ = TIMECODE_TABLE

    id = Column(Integer, primary_key=True)
    timecode = Column(Integer, nullable=False)
    archive_name = Column(String, nullable=False)
    completed = Column(Boolean, default=False)
    synced = Column(Boolean, default=False)
    finalized = Column(Boolean, default=False)
    finalize_file_id = Column(Integer, ForeignKey(f"{FILES_TABLE}.id"))

    def __repr__(self) -> str:
        return (
            f"TimecodeDir(archive={self.archive_name!r}, timecode={self.timecode}, "
            f"completed={self.completed}, synced={self.synced}, finalized={self.finalized})"
        )


class SupRsyncFile(Base):
    """One registered file: where it is, where it goes, and how far it got."""

    __tablename__ = FILES_TABLE

    id = Column(Integer, primary_key=True)
    local_path = Column(String, nullable=False)
    local_md5sum = Column(String, nullable=False)
    archive_name = Column(String, nullable=False)
    remote_path = Column(String, nullable=False)
    timestamp = Column(Float, nullable=False)
    remote_md5sum = Column(String)
    copied = Column(Float)
    removed = Column(Float)
    failed_copy_attempts = Column(Integer, default=0)
    deletable = Column(Boolean, default=True)
    ignore = Column(Boolean, default=False)

    def __str__(self) -> str:
        return (
            f"SupRsyncFile(id={self.id}, archive={self.archive_name!r}, "
            f"local_path={self.local_path!r}, remote_path={self.remote_path!r}, "
            f"synced={self.is_synced}, removed={self.removed})"
        )

    __repr__ = __str__

    @property
    def is_synced(self) -> bool:
        """True when the destination checksum equals the local one."""
        return self.remote_md5sum is not None and self.remote_md5sum == self.local_md5sum


class FileClaim(Base):
    """A lease on a file by one agent while it copies and verifies it.

    Not part of the original schema: an extra table that other programs ignore.
    It keeps agents sharing a catalog from copying the same file at once.
    """

    __tablename__ = f"suprsync_claims_v{TABLE_VERSION}"

    file_id = Column(Integer, primary_key=True, autoincrement=False)
    agent_id = Column(String, nullable=False)
    expires = Column(Float, nullable=False)


class Supplement(Base):
    """A further finalization file written for files registered into a finalized dir.

    Not part of the original schema: an extra table that other programs ignore.
    ``covers_up_to`` is the highest file id of the dir that the file describes;
    rows of the dir above the highest such bound (or above ``finalize_file_id``)
    are not described by any finalization file.
    """

    __tablename__ = f"suprsync_supplements_v{TABLE_VERSION}"

    id = Column(Integer, primary_key=True)
    archive_name = Column(String, nullable=False)
    timecode = Column(Integer, nullable=False)
    instance_id = Column(String, nullable=False)
    file_id = Column(Integer, nullable=False)
    covers_up_to = Column(Integer, nullable=False)
    late_files = Column(Integer, nullable=False)
    written_at = Column(Float, nullable=False)


class Conflict(Base):
    """A file that must not be sent as it is, with the row it collides with.

    Not part of the original schema: an extra table that other programs ignore.
    A conflict is resolved only by an operator (``suprsync resolve``).
    """

    __tablename__ = f"suprsync_conflicts_v{TABLE_VERSION}"

    file_id = Column(Integer, primary_key=True, autoincrement=False)
    archive_name = Column(String, nullable=False)
    #: collision | changed (local file changed after its copy was verified)
    kind = Column(String, nullable=False)
    other_id = Column(Integer)
    detail = Column(String, nullable=False)
    since = Column(Float, nullable=False)


class PinnedFile(Base):
    """A file whose copy was verified once: its registered md5 is the only one accepted.

    A re-send of such a file (its remote copy vanished or rotted) never takes a
    changed local file for new content.
    """

    __tablename__ = f"suprsync_pinned_v{TABLE_VERSION}"

    file_id = Column(Integer, primary_key=True, autoincrement=False)
    md5 = Column(String, nullable=False)


class PathKey(Base):
    """The normalized remote path of a row whose remote_path is spelled otherwise.

    Rows spelled canonically are found through the files table's own index; the
    few written like ``a//b`` or ``a/./b`` by other programs are found here.
    """

    __tablename__ = f"suprsync_paths_v{TABLE_VERSION}"

    file_id = Column(Integer, primary_key=True, autoincrement=False)
    archive_name = Column(String, nullable=False)
    path = Column(String, nullable=False)


class CatalogMeta(Base):
    """Small named values suprsync keeps in the catalog (scan marks, published rules)."""

    __tablename__ = f"suprsync_meta_v{TABLE_VERSION}"

    key = Column(String, primary_key=True)
    value = Column(String)


class LocalDir(Base):
    """Where a local directory resolved to when suprsync first saw a file in it."""

    __tablename__ = f"suprsync_local_dirs_v{TABLE_VERSION}"

    path = Column(String, primary_key=True)
    real = Column(String, nullable=False)


class DestinationRecord(Base):
    """One destination of an archive, by its stable id.

    Not part of the original schema: an extra table that other programs ignore.
    The primary destination's state is the files table's own columns; every
    other destination's is in :class:`DestinationCopy`. ``tracked_up_to`` is the
    highest file id given a copy row for this destination.
    """

    __tablename__ = f"suprsync_destinations_v{TABLE_VERSION}"

    id = Column(Integer, primary_key=True)
    archive_name = Column(String, nullable=False)
    name = Column(String, nullable=False)
    url = Column(String, nullable=False)
    is_primary = Column(Boolean, nullable=False, default=False)
    added = Column(Float, nullable=False)
    tracked_up_to = Column(Integer, nullable=False, default=0)


class DestinationCopy(Base):
    """The state of one file at one destination other than the primary.

    Not part of the original schema: an extra table that other programs ignore.
    ``verified`` is true once the md5 seen there matched the local one; ``lost``
    once the local file went before it could be copied there.
    """

    __tablename__ = f"suprsync_copies_v{TABLE_VERSION}"

    dest = Column(Integer, primary_key=True, autoincrement=False)
    file_id = Column(Integer, primary_key=True, autoincrement=False)
    remote_md5sum = Column(String)
    copied = Column(Float)
    failed_copy_attempts = Column(Integer, nullable=False, default=0)
    verified = Column(Boolean, nullable=False, default=False)
    lost = Column(Boolean, nullable=False, default=False)


class DestinationClaim(Base):
    """A lease on a file at one destination other than the primary, while it is copied."""

    __tablename__ = f"suprsync_dest_claims_v{TABLE_VERSION}"

    dest = Column(Integer, primary_key=True, autoincrement=False)
    file_id = Column(Integer, primary_key=True, autoincrement=False)
    agent_id = Column(String, nullable=False)
    expires = Column(Float, nullable=False)


F = SupRsyncFile
DC = DestinationCopy

#: SQL condition: a copy row still to be copied and verified at its destination.
PENDING_COPY = and_(DC.verified.is_(False), DC.lost.is_(False))

#: SQL condition: the remote copy is not (yet) verified.
UNSYNCED = or_(F.remote_md5sum.is_(None), F.remote_md5sum != F.local_md5sum)
#: SQL condition: the remote copy is verified.
SYNCED = and_(F.remote_md5sum.is_not(None), F.remote_md5sum == F.local_md5sum)
#: SQL condition: not marked ignored (NULL means not ignored).
NOT_IGNORED = or_(F.ignore.is_(None), F.ignore.is_(False))
#: SQL condition: deletable (NULL means deletable).
DELETABLE = or_(F.deletable.is_(None), F.deletable.is_(True))

# Indexes are added to catalogs created by other programs when a manager opens
# them (CREATE INDEX IF NOT EXISTS); they never change a column.
INDEXES = [
    Index("ix_suprsync_archive_time", F.archive_name, F.timestamp),
    Index("ix_suprsync_local_path", F.local_path),
    Index(
        "ix_suprsync_unsynced",
        F.archive_name,
        F.timestamp,
        sqlite_where=UNSYNCED,
        postgresql_where=UNSYNCED,
    ),
    # sqlite's index of the unverified rows (PostgreSQL keeps ix_suprsync_unsynced):
    # the columns the claim and the dir checks test are in it, so the rows they pass
    # over (given up on, ignored) are rejected from the index alone, without reading
    # the table; and (timestamp, id) is the copy order.
    Index(
        "ix_suprsync_unverified",
        F.archive_name,
        F.timestamp,
        F.id,
        F.ignore,
        F.failed_copy_attempts,
        F.removed,
        F.remote_path,
        sqlite_where=UNSYNCED,
    ),
    Index(
        "ix_suprsync_present",
        F.archive_name,
        F.timestamp,
        sqlite_where=F.removed.is_(None),
        postgresql_where=F.removed.is_(None),
    ),
    # The local rows verified at the primary: the deletion step's candidates, without
    # the local rows it can never delete (given up, waiting for their copy).
    Index(
        "ix_suprsync_verified_present",
        F.archive_name,
        F.timestamp,
        sqlite_where=and_(F.removed.is_(None), SYNCED),
        postgresql_where=and_(F.removed.is_(None), SYNCED),
    ),
    # text_pattern_ops: PostgreSQL compares bytewise through it, for prefix ranges.
    Index("ix_suprsync_remote_path", F.archive_name, F.remote_path,
          postgresql_ops={"remote_path": "text_pattern_ops"}),
    Index("ix_suprsync_path_keys", PathKey.archive_name, PathKey.path,
          postgresql_ops={"path": "text_pattern_ops"}),
    Index("ix_suprsync_conflicts_archive", Conflict.archive_name),
    Index("ix_suprsync_tcdir", TimecodeDir.archive_name, TimecodeDir.timecode),
    Index("ix_suprsync_claims_agent", FileClaim.agent_id),
    Index("ix_suprsync_supplements_dir", Supplement.archive_name, Supplement.timecode),
    Index("ix_suprsync_destinations", DestinationRecord.archive_name, DestinationRecord.name,
          unique=True),
    Index("ix_suprsync_copies_pending", DC.dest, DC.file_id,
          sqlite_where=PENDING_COPY, postgresql_where=PENDING_COPY),
    Index("ix_suprsync_copies_file", DC.file_id),
    # A destination's files by state are counted from this index alone, every iteration.
    Index("ix_suprsync_copies_state", DC.dest, DC.verified, DC.lost),
    Index("ix_suprsync_dest_claims_agent", DestinationClaim.agent_id),
]

#: The partial indexes of unsynced rows: each backend makes one of them (its dialect's
#: ``unsynced_index``), so they are not part of the table's own DDL.
UNSYNCED_INDEXES = ("ix_suprsync_unverified", "ix_suprsync_unsynced")
for _index in INDEXES:
    if _index.name in UNSYNCED_INDEXES:
        F.__table__.indexes.discard(_index)
