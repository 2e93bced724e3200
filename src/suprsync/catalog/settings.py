"""Catalog constants that load without SQLAlchemy: table names and the lock wait."""

TABLE_VERSION = 0
FILES_TABLE = f"supersync_v{TABLE_VERSION}"
TIMECODE_TABLE = f"timecode_dirs_v{TABLE_VERSION}"

#: Seconds SQLite itself waits for a lock before giving up on one statement.
BUSY_TIMEOUT = 30.0

#: What SQLite keeps beside a catalog file: the file itself, its WAL, its shared
#: memory and its rollback journal.
CATALOG_FILE_SUFFIXES = ("", "-wal", "-shm", "-journal")
