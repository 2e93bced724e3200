"""SupRsyncFilesManager: registering files and every query the agent makes."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import wraps
from typing import Any, TypeVar

from sqlalchemy import and_, bindparam, delete, exists, func, inspect, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from ..hashing import md5_file
from ..paths import check_local_file, normalize_remote_path, timecode_of
from . import filecount, idmarks
from . import timecode as tc_rules
from .copies import forget_verifications
from .dialects import (
    TRIGGERS,
    CatalogDialect,
    database_file,
    dialect_for,
    plain_insert_sql,
    via_unsynced_index,
)
from .engine import CatalogBusy, configure_sqlite, make_engine, retry_busy
from .idmarks import id_mark, ids_reused
from .localdirs import record_dirs
from .meta import get_meta, set_meta
from .quarantine import HEALTHY, TIME_OK, is_valid_text
from .requeue import requeue_row
from .schema import (
    DELETABLE,
    INDEXES,
    NOT_IGNORED,
    SYNCED,
    UNSYNCED,
    UNSYNCED_INDEXES,
    Base,
    CatalogMeta,
    Conflict,
    FileClaim,
    SupRsyncFile,
    TimecodeDir,
)
from .settings import BUSY_TIMEOUT
from .unsynced import unsynced_rows

log = logging.getLogger(__name__)

F = SupRsyncFile
T = TypeVar("T")
Clock = Callable[[], float]


def create_file(
    local_path: Any,
    remote_path: Any,
    archive_name: str,
    local_md5sum: str | None = None,
    timestamp: float | None = None,
    deletable: bool | None = True,
) -> SupRsyncFile:
    """Build (not insert) a catalog row for a local file, hashing it when no md5 is given.

    Raises ValueError for a remote path that would leave the remote base dir, and
    OSError when the local path is missing or not a regular file.
    """
    local_path = os.path.abspath(str(local_path))
    remote_path = normalize_remote_path(str(remote_path))
    if local_md5sum is None:
        check_local_file(local_path)
        local_md5sum = md5_file(local_path)
    elif os.path.exists(local_path):
        check_local_file(local_path)  # with a given md5 it may be missing, not irregular
    if timestamp is None:
        timestamp = time.time()
    row = SupRsyncFile(
        local_path=local_path,
        local_md5sum=local_md5sum,
        archive_name=archive_name,
        remote_path=remote_path,
        timestamp=timestamp,
        failed_copy_attempts=0,
        deletable=True if deletable is None else bool(deletable),
        ignore=False,
    )
    return row


def with_session(method: Callable[..., T]) -> Callable[..., T]:
    """Run a method in the caller's session, or in a new one committed at the end."""

    @wraps(method)
    def wrapper(self: SupRsyncFilesManager, *args: Any, session: Session | None = None,
                **kwargs: Any) -> T:
        if session is not None:
            return method(self, *args, session=session, **kwargs)

        def attempt() -> T:
            with self.Session.begin() as new_session:
                return method(self, *args, session=new_session, **kwargs)

        return retry_busy(attempt, what=method.__name__)

    return wrapper


@dataclass(frozen=True)
class CopyResult:
    """What the destination said about one copied file."""

    file_id: int
    remote_md5sum: str | None
    copied: float | None
    ok: bool
    #: The local file's md5 when it changed after registration.
    local_md5sum: str | None = None


def _copyable_query(archive_name: str, max_copy_attempts: int | None,
                    num_files: int | None):  # type: ignore[no-untyped-def]
    query = via_unsynced_index(
        select(F).where(F.archive_name == archive_name, UNSYNCED, F.removed.is_(None),
                        NOT_IGNORED, HEALTHY), F)
    if max_copy_attempts is not None:
        query = query.where(func.coalesce(F.failed_copy_attempts, 0) < max_copy_attempts)
    query = query.order_by(F.timestamp, F.id)
    if num_files is not None:
        query = query.limit(num_files)
    return query


def _after(after: tuple[float, int] | None) -> list[Any]:
    """SQL conditions: later than ``after`` in the copy order (none when it is None)."""
    if after is None:
        return []
    timestamp, file_id = after
    return [F.timestamp >= timestamp,
            or_(F.timestamp > timestamp, and_(F.timestamp == timestamp, F.id > file_id))]


_INSERT_COLUMNS = [c.name for c in F.__table__.columns if c.name != "id"]
_SQLITE_INSERT = plain_insert_sql(F.__table__, _INSERT_COLUMNS)

#: File ids of older rows scanned for timecode dirs per detect_timecode_dirs call.
TC_SCAN_CHUNK = 20_000


#: Meta key prefix: ``low high`` of the file ids scanned for timecode dirs, per archive.
TC_SCAN_PREFIX = "timecode_dirs_scanned:"
#: Meta key prefix (then the archive): the count of idmarks when the highest id was scanned.
TC_SCAN_MARK_PREFIX = "timecode_dirs_scanned_mark:"


def tc_scan_state(session: Session, archive_name: str, top: int) -> tuple[int, int]:
    """(low, high] of the ids already scanned for timecode dirs; (top, top) when unknown.

    A state above the highest id (the table was emptied and refilled) is not trusted.
    """
    value = get_meta(session, TC_SCAN_PREFIX + archive_name)
    try:
        low, high = (int(x) for x in (value or "").split())
    except ValueError:
        return top, top
    if not 0 <= low <= high <= top:
        return top, top
    return low, high


def record_tc_scan_state(session: Session, archive_name: str, state: tuple[int, int]) -> None:
    """Keep how far the scans for timecode dirs got."""
    set_meta(session, TC_SCAN_PREFIX + archive_name, f"{state[0]} {state[1]}")


def finalized_until(session: Session, archive_name: str, now: float) -> float:
    """Time before which every non-ignored file of the archive is synced (now when all are)."""
    oldest = session.scalar(via_unsynced_index(
        select(F.timestamp)
        .where(F.archive_name == archive_name, UNSYNCED, NOT_IGNORED, TIME_OK)
        .order_by(F.timestamp)
        .limit(1), F))
    return now if oldest is None else float(oldest) - 1


class SupRsyncFilesManager:
    """The catalog: registers files and answers the agent's questions about them.

    ``db_path`` is an sqlite file path (created with its directory when missing)
    or an SQLAlchemy URL.
    """

    def __init__(
        self,
        db_path: str,
        create_all: bool = True,
        echo: bool = False,
        pool_size: int = 5,
        max_overflow: int = 10,
        clock: Clock = time.time,
    ) -> None:
        self.db_path = str(db_path)
        self.clock = clock
        self._engine = make_engine(self.db_path, echo, pool_size, max_overflow)
        #: What differs between the backends (see dialects.py), chosen here once.
        self.dialect: CatalogDialect = dialect_for(self._engine)
        self.Session = sessionmaker(bind=self._engine, expire_on_commit=False)
        if create_all:
            retry_busy(self._create_schema, what="create catalog tables")
        retry_busy(lambda: self.dialect.note_indexes(self._engine), what="read catalog indexes")
        # Timecode dirs known to have a row (so add_file need not look again).
        self._known_tcdirs: set[tuple[str, int]] = set()
        # Local directories whose real path was recorded (see localdirs.py).
        self._known_localdirs: set[str] = set()
        # add_file's own sqlite connection, outside the pool (see _insert_plain).
        self._plain: sqlite3.Connection | None = None
        self._sqlite_file = self.sqlite_path()
        self._plain_lock = threading.Lock()
        # Per archive: the row count last made, and the highest id of the one kept
        # in the catalog.
        self._file_counts: dict[str, filecount.Count] = {}
        self._stored_tops: dict[str, int] = {}
        self._create_all = create_all
        self._meta_table: bool | None = None
        # Per archive, a full count running in the background (prefetch_file_count).
        self._count_jobs: dict[str, threading.Thread] = {}
        self._count_jobs_lock = threading.Lock()
        # Per archive, the file ids already scanned for timecode dirs: (low, high].
        self._tc_scanned: dict[str, tuple[tuple[int, int], str | None]] = {}

    @property
    def engine(self):  # type: ignore[no-untyped-def]
        """The SQLAlchemy engine of the catalog."""
        return self._engine

    def sqlite_path(self) -> str | None:
        """Absolute path of the catalog file when it is sqlite, else None."""
        return database_file(self._engine.url)

    def close(self) -> None:
        """Release pooled connections."""
        with self._count_jobs_lock:
            jobs = list(self._count_jobs.values())
            self._count_jobs.clear()
        for job in jobs:
            job.join()
        with self._plain_lock:
            if self._plain is not None:
                self._plain.close()
                self._plain = None
        self._engine.dispose()

    def _create_schema(self) -> None:
        # Another process may create the same tables at the same moment: the loser's
        # "already exists" just means the work is done, so look again.
        for attempt in range(5):
            try:
                self._create_missing()
                return
            except SQLAlchemyError as exc:
                if "already exists" not in str(exc).lower() or attempt == 4:
                    raise
                log.info("catalog tables were created by another process meanwhile")

    def _create_missing(self) -> None:
        Base.metadata.create_all(self._engine)
        tables = [t.name for t in Base.metadata.sorted_tables]
        existing = {ix["name"] for t in tables for ix in inspect(self._engine).get_indexes(t)}
        for index in INDEXES:
            if index.name in UNSYNCED_INDEXES and index.name != self.dialect.unsynced_index:
                continue
            if index.name not in existing:
                index.create(self._engine, checkfirst=True)
        with self.Session.begin() as session:
            filecount.install_mark(session)
            idmarks.install(session)

    def write(self, fn: Callable[[Session], T], what: str = "catalog write") -> T:
        """Run fn(session) in one short transaction, waiting while the catalog is locked."""

        def attempt() -> T:
            with self.Session.begin() as session:
                return fn(session)

        return retry_busy(attempt, what=what)

    def read(self, fn: Callable[[Session], T], what: str = "catalog read") -> T:
        """Run fn(session) for reading, waiting while the catalog is locked."""

        def attempt() -> T:
            with self.Session() as session:
                return fn(session)

        return retry_busy(attempt, what=what)

    # ------------------------------------------------------------------ API

    def add_file(
        self,
        local_path: Any,
        remote_path: Any,
        archive_name: str,
        local_md5sum: str | None = None,
        timestamp: float | None = None,
        session: Session | None = None,
        deletable: bool = True,
    ) -> SupRsyncFile:
        """Register a local file to be copied to ``<remote_basedir>/<remote_path>``.

        The file is hashed (when no md5 is given) before any transaction starts.
        With ``session``, the row is added to it and the caller commits.
        """
        if timestamp is None:
            timestamp = self.clock()
        row = create_file(local_path, remote_path, archive_name, local_md5sum=local_md5sum,
                          timestamp=timestamp, deletable=deletable)
        timecode = timecode_of(row.remote_path)
        folder = os.path.dirname(row.local_path)
        if session is not None:
            session.add(row)
            self._ensure_tcdir(session, archive_name, timecode)
            record_dirs(session, {folder: os.path.realpath(folder)})
            session.flush()
            return row
        if folder not in self._known_localdirs:
            real = os.path.realpath(folder)
            self.write(lambda s: record_dirs(s, {folder: real}), what="record local dir")
            self._known_localdirs.add(folder)
        return self._add_row(row, archive_name, timecode)

    def _add_row(self, row: SupRsyncFile, archive_name: str,
                 timecode: int | None) -> SupRsyncFile:
        """Insert a built row, by plain sqlite3 when its timecode dir has its row."""
        values = {c: getattr(row, c) for c in _INSERT_COLUMNS}
        path = self._sqlite_file
        if path is not None and (timecode is None
                                 or (archive_name, timecode) in self._known_tcdirs):
            file_id = self._insert_plain(path, tuple(values.values()))
            if file_id is not None:
                row.id = file_id
                return row

        def insert_row() -> int:
            with self._engine.begin() as conn:
                file_id = self.dialect.insert_returning_id(conn, F.__table__, values)
                if timecode is not None and (archive_name, timecode) not in self._known_tcdirs:
                    with Session(bind=conn) as tc_session:
                        tc_rules.ensure_tcdir(tc_session, archive_name, timecode)
                        tc_session.flush()
            return int(file_id)

        row.id = retry_busy(insert_row, what="add_file")
        if timecode is not None:
            self._known_tcdirs.add((archive_name, timecode))
        return row

    def _insert_plain(self, path: str, values: tuple[Any, ...]) -> int | None:
        """Insert one file row with plain sqlite3; None when that failed (not for a lock).

        The hot path of producers that register files one by one, in a timecode dir
        that has its row already: one autocommitted INSERT on a connection kept for
        this, without the pool and the ORM in the way. Any failure but a lock is left
        to the SQLAlchemy path, which reports it the usual way.
        """

        def insert() -> int:
            with self._plain_lock:
                if self._plain is None:
                    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None,
                                           check_same_thread=False)
                    configure_sqlite(conn)
                    self._plain = conn
                file_id = self._plain.execute(_SQLITE_INSERT, values).lastrowid
            assert file_id is not None
            return file_id

        try:
            return retry_busy(insert, what="add_file")
        except sqlite3.Error as exc:
            log.debug("add_file through plain sqlite3 failed (%s): using SQLAlchemy", exc)
            return None

    @with_session
    def get_copyable_files(
        self,
        archive_name: str,
        session: Session | None = None,
        max_copy_attempts: int | None = None,
        num_files: int | None = None,
    ) -> list[SupRsyncFile]:
        """Files not synced, not removed, not ignored and below the attempt limit; oldest first."""
        assert session is not None
        return list(session.scalars(_copyable_query(archive_name, max_copy_attempts,
                                                    num_files)))

    @with_session
    def get_deletable_files(
        self, archive_name: str, delete_after: float, session: Session | None = None,
        limit: int | None = None,
    ) -> list[SupRsyncFile]:
        """Synced, deletable, not removed files registered more than delete_after s ago."""
        assert session is not None
        query = (
            select(F)
            .where(F.archive_name == archive_name, F.removed.is_(None), SYNCED, DELETABLE,
                   F.timestamp < self.clock() - float(delete_after), HEALTHY,
                   ~exists().where(Conflict.file_id == F.id))
            .order_by(F.timestamp, F.id)
        )
        if limit is not None:
            query = query.limit(limit)
        return list(session.scalars(query))

    @with_session
    def get_known_files(
        self, archive_name: str, session: Session | None = None, min_ctime: float | None = None
    ) -> list[SupRsyncFile]:
        """Every file of the archive registered after min_ctime, oldest first."""
        assert session is not None
        query = select(F).where(F.archive_name == archive_name)
        if min_ctime is not None:
            query = query.where(F.timestamp > min_ctime)
        return list(session.scalars(query.order_by(F.timestamp, F.id)))

    @with_session
    def get_finalized_until(self, archive_name: str, session: Session | None = None) -> float:
        """Time before which every non-ignored file is synced (now when all are)."""
        assert session is not None
        return finalized_until(session, archive_name, self.clock())

    @with_session
    def get_archive_stats(self, archive_name: str, session: Session | None = None,
                          now: float | None = None) -> dict:
        """finalized_until, num_files, uncopied_files, last_file_added, last_file_copied.

        ``now``: the time of the statistics (default: this catalog's clock).
        """
        assert session is not None
        in_archive = F.archive_name == archive_name
        num_files = self._count_files(session, archive_name)
        uncopied = session.scalar(select(func.count()).select_from(
            unsynced_rows(archive_name, F.id).subquery()))
        last_added = session.scalar(
            select(F.local_path).where(in_archive, HEALTHY)
            .order_by(F.timestamp.desc(), F.id.desc()).limit(1))
        last_copied = session.scalar(
            select(F.local_path).where(in_archive, SYNCED, HEALTHY)
            .order_by(F.timestamp.desc(), F.id.desc()).limit(1))
        return {
            "finalized_until": finalized_until(session, archive_name,
                                               self.clock() if now is None else now),
            "num_files": int(num_files or 0),
            "uncopied_files": int(uncopied or 0),
            "last_file_added": last_added or "",
            "last_file_copied": last_copied or "",
        }

    def prefetch_file_count(self, archive_name: str) -> None:
        """Bring the archive's row count up to date in the background when it may be due.

        The next get_archive_stats waits for it instead of counting, so a full count
        (a scan of every row of the archive, needed only when the count kept in the
        catalog cannot be used, see catalog.filecount) overlaps whatever the caller
        does meanwhile; the agent starts it before copying.
        """
        known = self._file_counts.get(archive_name)
        if known is not None and (
                (known.mark is not None and self.dialect.deletion_mark == TRIGGERS)
                or 0 <= self.clock() - known.counted_at <= filecount.FULL_COUNT_INTERVAL):
            return
        with self._count_jobs_lock:
            if archive_name in self._count_jobs:
                return
            job = threading.Thread(target=self._background_count, args=(archive_name,),
                                   name="suprsync-count", daemon=True)
            self._count_jobs[archive_name] = job
        job.start()

    def _background_count(self, archive_name: str) -> None:
        try:
            count, keep = self.read(lambda s: self._current_count(s, archive_name),
                                    what="count files")
            if keep and self._create_all:
                self.write(lambda s: self._store_count(s, archive_name, count),
                           what="keep file count")
        except (SQLAlchemyError, CatalogBusy) as exc:  # the stats step counts again
            log.debug("background count of %s failed: %s", archive_name, exc)
            return
        self._file_counts[archive_name] = count

    def _current_count(self, session: Session, archive_name: str) -> tuple[filecount.Count, bool]:
        """The archive's row count now, and whether the catalog should keep it.

        A count known (in this process or in the catalog) is brought forward by the
        rows added since; only when it cannot be used are the archive's rows counted.
        """
        top = tc_rules.max_file_id(session)
        now = self.clock()
        kept = self._can_keep_count(session)
        mark = filecount.deletion_mark(session) if kept else None
        known = self._file_counts.get(archive_name)
        if known is None and kept:
            known = filecount.stored(session, archive_name)
            if known is not None:
                self._stored_tops[archive_name] = known.top
        if known is None or not filecount.usable(session, known, top, mark, now):
            return filecount.Count(top, filecount.count_whole(session, archive_name, top),
                                   mark, now), kept
        count = filecount.Count(
            top, known.rows + filecount.rows_between(session, archive_name, known.top, top),
            mark, known.counted_at)
        stored_top = self._stored_tops.get(archive_name, -1)
        return count, kept and (stored_top < 0 or top - stored_top >= filecount.STORE_STEP)

    def _can_keep_count(self, session: Session) -> bool:
        """True when counts are kept in the catalog: a manager that created the schema, or
        read-only on a catalog that has the meta table (the count is read, not written)."""
        if self._meta_table is None:
            self._meta_table = self._create_all or inspect(session.get_bind()).has_table(
                CatalogMeta.__tablename__)
        return self._meta_table

    def _store_count(self, session: Session, archive_name: str,
                     count: filecount.Count) -> None:
        filecount.store(session, archive_name, count)
        self._stored_tops[archive_name] = count.top

    def _count_files(self, session: Session, archive_name: str) -> int:
        """Rows of the archive, counting only the rows added since a count it knows.

        Counting a million rows on every iteration is what made the original slow.
        """
        with self._count_jobs_lock:
            job = self._count_jobs.pop(archive_name, None)
        if job is not None:
            job.join()
        count, keep = self._current_count(session, archive_name)
        if keep and self._create_all:
            self._store_count(session, archive_name, count)
        self._file_counts[archive_name] = count
        return count.rows

    def create_all_timecode_dirs(self, archive_name: str, min_ctime: float | None = None) -> int:
        """Create the timecode-dir rows of every file of the archive (a full rebuild).

        Returns the number of rows created.
        """
        return self.write(
            lambda s: tc_rules.scan_timecodes(s, archive_name, min_ctime=min_ctime)[0],
            what="create timecode dirs",
        )

    def update_all_timecode_dirs(
        self, archive_name: str, file_root: str, sync_id: str
    ) -> list[TimecodeDir]:
        """Detect new timecode dirs, complete, sync and finalize them; return those finalized.

        The original's entry point to the finalization step (run with this catalog's clock).
        """
        from ..finalization import update_timecode_dirs

        self.detect_timecode_dirs(archive_name)
        return update_timecode_dirs(self, archive_name, file_root, sync_id, clock=self.clock)

    # ------------------------------------------------------- agent helpers

    def detect_timecode_dirs(self, archive_name: str) -> int:
        """Create timecode-dir rows for files registered since the last call.

        New rows are scanned at once; older rows are scanned backwards, TC_SCAN_CHUNK
        ids per call, so that no call reads the whole archive. How far the scans got
        is kept in the catalog, so a new process goes on where the last one stopped
        and a catalog is backfilled once. Returns the number of dir rows created.
        """
        scanned = self._tc_scanned.get(archive_name)
        mark_key = TC_SCAN_MARK_PREFIX + archive_name

        def scan(session: Session) -> tuple[int, tuple[int, int], str | None, int | None]:
            top = tc_rules.max_file_id(session)
            if scanned is not None:
                (low, high), mark = scanned
            else:
                low, high = tc_scan_state(session, archive_name, top)
                mark = get_meta(session, mark_key)
            reused = None
            if ids_reused(session, high, mark, top):
                # The newest rows were deleted and their ids perhaps given to new rows:
                # scan as a new catalog is scanned, from the top down.
                reused, low, high = high, top, top
            created, _ = tc_rules.scan_timecodes(session, archive_name, high, top)
            new_low = max(0, low - TC_SCAN_CHUNK)
            if low > 0:
                created += tc_rules.scan_timecodes(session, archive_name, new_low, low)[0]
            state = (new_low, max(high, top))
            if state != (low, high) or scanned is None or reused is not None:
                record_tc_scan_state(session, archive_name, state)
            now_mark = id_mark(session)
            if now_mark != mark:
                mark = now_mark
                set_meta(session, mark_key, mark)
            return created, state, mark, reused

        created, state, mark, reused = self.write(scan, what="detect timecode dirs")
        self._tc_scanned[archive_name] = (state, mark)
        if reused is not None:
            log.warning("the newest rows of the catalog were deleted since the timecode "
                        "dirs of archive %s were looked for up to file id %d (sqlite gives "
                        "their ids to new rows): its rows are read again, from the newest",
                        archive_name, reused)
        return created

    def _ensure_tcdir(self, session: Session, archive_name: str, timecode: int | None) -> None:
        if timecode is not None:
            tc_rules.ensure_tcdir(session, archive_name, timecode)

    def max_file_id(self) -> int:
        """Highest file id of the catalog (0 when it is empty)."""
        return self.read(tc_rules.max_file_id, what="highest file id")

    def claim_holders(self) -> list[str]:
        """Ids of the agents holding at least one lease."""
        return self.read(lambda s: list(s.scalars(select(FileClaim.agent_id).distinct())),
                         what="claim holders")

    def claim_copyable(self, archive_name: str, agent_id: str, lease: float,
                       max_copy_attempts: int | None = None,
                       num_files: int | None = None,
                       after: tuple[float, int] | None = None,
                       up_to: int | None = None) -> list[SupRsyncFile]:
        """Select copyable files no other agent holds, and lease them to agent_id.

        ``after``: only files later in the copy order (timestamp, id) than this.
        ``up_to``: only files with an id up to this one.
        The rows are read-only records with the columns as attributes.

        Leases that expired (their agent died) are dropped first. On PostgreSQL the
        selection skips rows another agent is claiming at the same moment.
        """

        def claim(session: Session) -> list[SupRsyncFile]:
            now = self.clock()
            # The first statement writes, so sqlite takes its write lock up front.
            session.execute(delete(FileClaim).where(
                (FileClaim.expires < now) | (FileClaim.agent_id == agent_id)))
            query = _copyable_query(archive_name, max_copy_attempts, num_files).where(
                *_after(after),
                *([] if up_to is None else [F.id <= up_to]),
                ~exists().where(FileClaim.file_id == F.id),
                ~exists().where(Conflict.file_id == F.id))
            # Plain rows (attribute access by column name), not ORM objects: a slice
            # of a large backlog costs a few hundred bytes per file, not kilobytes.
            query = query.with_only_columns(*F.__table__.columns)
            rows = list(session.execute(self.dialect.claim(query, of=F)))
            if not rows:
                return rows
            leases = [{"file_id": r.id, "agent_id": agent_id, "expires": now + lease}
                      for r in rows]
            won = self.dialect.insert_claims(session, FileClaim.__table__, leases)
            return [r for r in rows if r.id in won]

        return self.write(claim, what="claim files")

    def renew_claims(self, agent_id: str, lease: float) -> None:
        """Extend the leases of agent_id."""
        self.write(lambda s: s.execute(update(FileClaim).where(FileClaim.agent_id == agent_id)
                                       .values(expires=self.clock() + lease)),
                   what="renew claims")

    def release_claims(self, agent_id: str, file_ids: Iterable[int] | None = None) -> None:
        """Drop leases of agent_id (all of them, or on these files)."""
        ids = None if file_ids is None else list(file_ids)

        def release(session: Session) -> None:
            stmt = delete(FileClaim).where(FileClaim.agent_id == agent_id)
            if ids is not None:
                stmt = stmt.where(FileClaim.file_id.in_(ids))
            session.execute(stmt)

        if ids is None or ids:
            self.write(release, what="release claims")

    def record_results(self, results: Sequence[CopyResult], agent_id: str | None = None) -> None:
        """Store remote checksums; a failed file gets one more failed attempt.

        With agent_id, that agent's leases on these files end in the same transaction.
        """
        if not results:
            return

        def apply(session: Session) -> None:
            if agent_id is not None:
                session.execute(delete(FileClaim).where(
                    FileClaim.agent_id == agent_id,
                    FileClaim.file_id.in_([r.file_id for r in results])))
            groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
            for r in results:
                values: dict[str, Any] = {}
                if r.copied is not None:
                    values["copied"] = r.copied
                if r.remote_md5sum is not None or not r.ok:
                    values["remote_md5sum"] = r.remote_md5sum
                if r.local_md5sum is not None:
                    values["local_md5sum"] = r.local_md5sum
                key = (*sorted(values), "" if r.ok else "failed")
                groups.setdefault(key, []).append({"fid": r.file_id, **values})
            # One executemany per kind of change, not one statement per file.
            table = F.__table__
            for key, params in groups.items():
                columns = [k for k in key if k and k != "failed"]
                changes: dict[str, Any] = {c: bindparam(c) for c in columns}
                if "failed" in key:
                    changes["failed_copy_attempts"] = (
                        func.coalesce(table.c.failed_copy_attempts, 0) + 1)
                if changes:
                    session.execute(table.update().where(table.c.id == bindparam("fid"))
                                    .values(**changes), params)
            changed = [r.file_id for r in results if r.local_md5sum is not None]
            if changed:
                # Copies of the old content at further destinations are no longer verified.
                forget_verifications(session, changed)

        self.write(apply, what="record copy results")

    def count_failed_attempt(self, file_ids: Iterable[int]) -> None:
        """Add one failed attempt to each of these files."""
        ids = list(file_ids)
        if not ids:
            return
        self.write(
            lambda s: s.execute(
                update(F).where(F.id.in_(ids))
                .values(failed_copy_attempts=func.coalesce(F.failed_copy_attempts, 0) + 1)),
            what="count failed attempt",
        )

    def mark_unsendable(self, file_ids: Iterable[int], max_copy_attempts: int) -> None:
        """Put files that can never be sent at the attempt limit, so they are not retried."""
        ids = list(file_ids)
        if not ids:
            return
        self.write(
            lambda s: s.execute(update(F).where(F.id.in_(ids))
                                .values(failed_copy_attempts=max_copy_attempts)),
            what="mark unsendable",
        )

    def requeue(self, file_id: int, observed_md5: str | None = None,
                local_md5: str | None = None, reset_attempts: bool = False) -> None:
        """Forget the verification of a file so that it is copied and verified again
        (see :func:`~suprsync.catalog.requeue.requeue_row`)."""
        self.write(lambda s: requeue_row(s, s.get(F, file_id), observed_md5, local_md5,
                                         reset_attempts), what="requeue")

    def mark_removed_many(self, removed: Sequence[tuple[int, float]]) -> None:
        """Record deletion times of many local files in one transaction."""
        if not removed:
            return

        table = F.__table__
        stmt = (table.update().where(table.c.id == bindparam("fid"), table.c.removed.is_(None))
                .values(removed=bindparam("when")))
        params = [{"fid": file_id, "when": when} for file_id, when in removed]
        self.write(lambda s: s.execute(stmt, params), what="mark removed")

    def mark_removed(self, file_id: int, removed: float) -> None:
        """Record the deletion time of a local file (0: it was already gone)."""
        self.mark_removed_many([(file_id, removed)])

    def archives(self) -> list[str]:
        """Names of every archive in the catalog."""
        return self.read(
            lambda s: sorted(a for a in s.scalars(select(F.archive_name).distinct())
                             if is_valid_text(a)), what="list archives")

    def file_by_local_path(self, local_path: str) -> list[SupRsyncFile]:
        """Rows registered for a local path (there may be several)."""
        path = os.path.abspath(local_path)
        return self.read(
            lambda s: list(s.scalars(select(F).where(F.local_path == path).order_by(F.id))),
            what="look up file")

    def known_local_paths(self, archive_name: str | None = None) -> set[str]:
        """Set of every local path registered (in one archive, or in all)."""

        def query(s: Session) -> set[str]:
            q = select(F.local_path)
            if archive_name is not None:
                q = q.where(F.archive_name == archive_name)
            return set(s.scalars(q))

        return self.read(query, what="known local paths")
