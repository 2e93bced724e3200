"""The Python API is a drop-in for socs 0.6.4's: names, signatures, session=, stats, handler."""

from __future__ import annotations

import hashlib
import inspect
import json
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from textwrap import dedent
from typing import Any

import helpers
import pytest
from conftest import run_peer
from helpers import (
    ARCHIVE,
    Clock,
    manager_fixture,  # noqa: F401 - the manager fixture
    sql,
)

import suprsync
from suprsync import SupRsyncFileHandler, SupRsyncFilesManager, create_file
from suprsync.transport import SshOptions

STATS_KEYS = {"finalized_until", "num_files", "uncopied_files", "last_file_added",
              "last_file_copied"}

M, H = SupRsyncFilesManager, SupRsyncFileHandler
SM, SH = "SupRsyncFilesManager", "SupRsyncFileHandler"

#: (name, socs's callable as a dotted path in socs.db.suprsync, ours) for every public
#: callable named in compat.md section 2.
SIGNATURE_PAIRS: list[tuple[str, str, Callable[..., Any]]] = [
    ("SupRsyncFilesManager.__init__", f"{SM}.__init__", M.__init__),
    ("add_file", f"{SM}.add_file", M.add_file),
    ("get_copyable_files", f"{SM}.get_copyable_files", M.get_copyable_files),
    ("get_deletable_files", f"{SM}.get_deletable_files", M.get_deletable_files),
    ("get_known_files", f"{SM}.get_known_files", M.get_known_files),
    ("get_finalized_until", f"{SM}.get_finalized_until", M.get_finalized_until),
    ("get_archive_stats", f"{SM}.get_archive_stats", M.get_archive_stats),
    ("create_all_timecode_dirs", f"{SM}.create_all_timecode_dirs", M.create_all_timecode_dirs),
    ("update_all_timecode_dirs", f"{SM}.update_all_timecode_dirs", M.update_all_timecode_dirs),
    ("SupRsyncFileHandler.__init__", f"{SH}.__init__", H.__init__),
    ("copy_files", f"{SH}.copy_files", H.copy_files),
    ("delete_files", f"{SH}.delete_files", H.delete_files),
    ("create_file", "create_file", create_file),
]

# Scripts run by socs 0.6.4 in the peer interpreter (see conftest.run_peer).

#: Describe socs's API as JSON: the table names of its two models and, for each dotted path
#: in the JSON list argv[1], the parameters of that callable as [name, kind, default], where
#: kind is the inspect.Parameter.kind name and default the repr of the default (null: none).
PEER_DESCRIBE_API = dedent("""
    import inspect, json, sys
    from socs.db import suprsync as socs_db

    def parameters(dotted):
        obj = socs_db
        for attribute in dotted.split("."):
            obj = getattr(obj, attribute)
        return [[p.name, p.kind.name, None if p.default is p.empty else repr(p.default)]
                for p in inspect.signature(obj).parameters.values()]

    print(json.dumps({
        "tables": {model: getattr(socs_db, model).__tablename__
                   for model in ("SupRsyncFile", "TimecodeDir")},
        "signatures": {dotted: parameters(dotted) for dotted in json.loads(sys.argv[1])},
    }))
""")

#: Execute the snippet argv[1] with db_path argv[2] and local_abspath argv[3] in its
#: namespace; print its result and copyable as JSON.
PEER_RUN_SNIPPET = dedent("""
    import json, sys
    snippet, db_path, local_abspath = sys.argv[1:]
    namespace = {"db_path": db_path, "local_abspath": local_abspath}
    exec(snippet, namespace)
    print(json.dumps({"result": namespace["result"], "copyable": namespace["copyable"]}))
""")


def make_file(folder: Path, name: str, content: bytes | None = None) -> Path:
    """Write a real local file."""
    return helpers.make_file(folder, name, content, filler="content of")


@pytest.fixture(scope="module")
def socs_api(peer_python: Path) -> dict[str, Any]:
    """socs's table names and signatures, as described by PEER_DESCRIBE_API."""
    dotted_paths = json.dumps([theirs for _, theirs, _ in SIGNATURE_PAIRS])
    return json.loads(run_peer(peer_python, PEER_DESCRIBE_API, dotted_paths).stdout)


@pytest.fixture
def clock() -> Clock:
    return Clock(2_000_000.0)


# ------------------------------------------------------------------- names


def test_public_names_importable_from_top_level(socs_api: dict[str, Any]) -> None:
    """The five names of the original db module import from `suprsync`."""
    from suprsync import (  # noqa: F401
        SupRsyncFile,
        SupRsyncFileHandler,
        SupRsyncFilesManager,
        TimecodeDir,
        create_file,
    )

    assert callable(create_file) and callable(SupRsyncFileHandler)
    assert callable(SupRsyncFilesManager)

    assert {"SupRsyncFile", "SupRsyncFileHandler", "SupRsyncFilesManager", "TimecodeDir",
            "create_file"} <= set(suprsync.__all__)
    assert SupRsyncFile.__tablename__ == socs_api["tables"]["SupRsyncFile"]
    assert TimecodeDir.__tablename__ == socs_api["tables"]["TimecodeDir"]


@pytest.mark.parametrize("name,theirs,ours", SIGNATURE_PAIRS,
                         ids=[p[0] for p in SIGNATURE_PAIRS])
def test_signature_is_prefix_compatible_with_socs(
    name: str, theirs: str, ours: Callable[..., Any], socs_api: dict[str, Any]
) -> None:
    """socs's parameters (names, order, kinds, defaults) come first; extras have defaults."""
    their_params = [tuple(p) for p in socs_api["signatures"][theirs]]
    our_params = list(inspect.signature(ours).parameters.values())
    assert their_params, name
    assert len(our_params) >= len(their_params), name

    def shape(p: inspect.Parameter) -> tuple[str, str, str | None]:
        """Like PEER_DESCRIBE_API: name, kind name, repr of the default (None: no default)."""
        return p.name, p.kind.name, None if p.default is p.empty else repr(p.default)

    assert [shape(p) for p in our_params[:len(their_params)]] == their_params, name
    for extra in our_params[len(their_params):]:
        assert extra.default is not inspect.Parameter.empty, f"{name}: {extra.name}"
        assert extra.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                              inspect.Parameter.KEYWORD_ONLY), f"{name}: {extra.name}"


def test_query_methods_accept_and_use_callers_session(
    manager: SupRsyncFilesManager, tmp_path: Path, tmp_catalog: Path
) -> None:
    """Every query method takes session=, and works inside the caller's transaction."""
    local = make_file(tmp_path, "f.g3")
    with manager.Session() as session:
        row = manager.add_file(str(local), "16750/f.g3", ARCHIVE, timestamp=100.0,
                               session=session)
        assert [f.id for f in manager.get_copyable_files(ARCHIVE, session=session)] == [row.id]
        assert [f.id for f in manager.get_known_files(ARCHIVE, session=session)] == [row.id]
        assert manager.get_deletable_files(ARCHIVE, 0, session=session) == []
        assert manager.get_finalized_until(ARCHIVE, session=session) == 99.0
        stats = manager.get_archive_stats(ARCHIVE, session=session)
        assert stats["num_files"] == 1
        # Nothing is visible outside the caller's session before it commits ...
        assert sql(tmp_catalog, "SELECT count(*) FROM supersync_v0") == [(0,)]
        session.rollback()
    # ... and the caller's rollback undoes it.
    assert manager.get_known_files(ARCHIVE) == []
    assert sql(tmp_catalog, "SELECT count(*) FROM timecode_dirs_v0") == [(0,)]


def test_create_all_timecode_dirs_builds_rows_of_one_archive(
    manager: SupRsyncFilesManager, tmp_catalog: Path
) -> None:
    """create_all_timecode_dirs adds the missing dirs of that archive only, once each."""
    for i, (archive, remote) in enumerate([
        (ARCHIVE, "16750/a/x.g3"), (ARCHIVE, "16750/b/y.g3"), (ARCHIVE, "16751/z.g3"),
        (ARCHIVE, "notatimecode/w.g3"), ("smurf", "16752/s.g3"),
    ]):
        sql(tmp_catalog,
            "INSERT INTO supersync_v0 (local_path, local_md5sum, archive_name, remote_path, "
            "timestamp) VALUES (?, ?, ?, ?, ?)",
            (f"/data/f{i}", "0" * 32, archive, remote, 100.0 + i))
    manager.create_all_timecode_dirs(ARCHIVE)
    manager.create_all_timecode_dirs(ARCHIVE)
    got = sql(tmp_catalog, "SELECT archive_name, timecode FROM timecode_dirs_v0 "
                           "ORDER BY archive_name, timecode")
    assert got == [(ARCHIVE, 16750), (ARCHIVE, 16751)]


# ------------------------------------------------------------------- stats


def test_archive_stats_values(
    manager: SupRsyncFilesManager, tmp_path: Path, tmp_catalog: Path, clock: Clock
) -> None:
    """Exactly five keys: counts, newest added/copied local path, finalized_until."""
    paths = {}
    ids = {}
    for t in (100, 200, 300, 400, 500):
        paths[t] = str(make_file(tmp_path, f"f{t}.g3"))
        ids[t] = manager.add_file(paths[t], f"16750/f{t}.g3", ARCHIVE, timestamp=t).id
    other = make_file(tmp_path, "other.g3")
    manager.add_file(str(other), "16750/other.g3", "smurf", timestamp=50)
    for t in (100, 400):
        sql(tmp_catalog, "UPDATE supersync_v0 SET remote_md5sum = local_md5sum WHERE id = ?",
            (ids[t],))
    sql(tmp_catalog, "UPDATE supersync_v0 SET ignore = 1 WHERE id = ?", (ids[200],))
    sql(tmp_catalog, "UPDATE supersync_v0 SET remote_md5sum = ? WHERE id = ?",
        ("0" * 32, ids[500]))

    stats = manager.get_archive_stats(ARCHIVE)
    assert set(stats) == STATS_KEYS
    assert stats == {
        "num_files": 5,
        "uncopied_files": 2,  # 300 and 500 (200 is ignored)
        "last_file_added": paths[500],
        "last_file_copied": paths[400],
        "finalized_until": 299.0,
    }


def test_archive_stats_when_empty_and_when_all_synced(
    manager: SupRsyncFilesManager, tmp_path: Path, tmp_catalog: Path, clock: Clock
) -> None:
    """No files: '' paths and now; all synced: finalized_until is the clock's now."""
    empty = manager.get_archive_stats(ARCHIVE)
    assert empty == {"num_files": 0, "uncopied_files": 0, "last_file_added": "",
                     "last_file_copied": "", "finalized_until": clock.now}

    local = str(make_file(tmp_path, "f.g3"))
    manager.add_file(local, "16750/f.g3", ARCHIVE, timestamp=100)
    unsynced = manager.get_archive_stats(ARCHIVE)
    assert unsynced["last_file_added"] == local
    assert unsynced["last_file_copied"] == ""
    assert unsynced["finalized_until"] == 99.0

    sql(tmp_catalog, "UPDATE supersync_v0 SET remote_md5sum = local_md5sum")
    clock.now = 2_500_000.0
    synced = manager.get_archive_stats(ARCHIVE)
    assert synced["uncopied_files"] == 0
    assert synced["last_file_copied"] == local
    assert synced["finalized_until"] == 2_500_000.0


# ----------------------------------------------------------------- handler


def test_copy_files_returns_local_path_md5_ok_tuples(
    manager: SupRsyncFilesManager, tmp_path: Path, remote_dir: Path
) -> None:
    """copy_files returns [(local_path, md5_ok)]: True for copied files, False for a gone one."""
    good = [make_file(tmp_path / "local", f"g{i}.g3") for i in range(2)]
    for i, path in enumerate(good):
        manager.add_file(str(path), f"16750/sub/g{i}.g3", ARCHIVE, timestamp=10 + i)
    gone = make_file(tmp_path / "local", "gone.g3")
    manager.add_file(str(gone), "16750/sub/gone.g3", ARCHIVE, timestamp=20)
    gone.unlink()

    handler = SupRsyncFileHandler(manager, ARCHIVE, str(remote_dir))
    try:
        result = handler.copy_files(max_copy_attempts=3)
    finally:
        handler.close()
    assert isinstance(result, list)
    assert all(isinstance(item, tuple) and len(item) == 2 for item in result)
    assert sorted(result) == sorted([(str(good[0]), True), (str(good[1]), True),
                                     (str(gone), False)])
    for i, path in enumerate(good):
        assert (remote_dir / f"16750/sub/g{i}.g3").read_bytes() == path.read_bytes()
    assert [f.local_path for f in manager.get_copyable_files(ARCHIVE)] == [str(gone)]


class SilentServer:
    """A TCP port on 127.0.0.1 that accepts connections and never says a word."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []

    def take(self) -> int:
        """Accept what is waiting; the number of connections made so far."""
        while True:
            try:
                self.accepted.append(self.sock.accept()[0])
            except OSError:
                return len(self.accepted)

    def close(self) -> None:
        for conn in self.accepted:
            conn.close()
        self.sock.close()


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


def _ssh_handler(manager: SupRsyncFilesManager, port: int, tmp_path: Path,
                 timeout: float) -> SupRsyncFileHandler:
    options = SshOptions(host="127.0.0.1", port=port, connect_timeout=timeout,
                         known_hosts=str(tmp_path / "known_hosts"))
    return SupRsyncFileHandler(manager, ARCHIVE, "/srv/archive", cmd_timeout=timeout,
                               ssh_options=options)


def test_copy_files_with_nothing_copyable_returns_empty_without_reaching_the_destination(
        manager: SupRsyncFilesManager, tmp_path: Path, silent: SilentServer) -> None:
    handler = _ssh_handler(manager, silent.port, tmp_path, 2.0)
    try:
        assert handler.copy_files() == []
    finally:
        handler.close()
    assert silent.take() == 0


def test_copy_files_raises_timeout_expired_when_the_destination_does_not_answer(
        manager: SupRsyncFilesManager, tmp_path: Path, silent: SilentServer) -> None:
    local = make_file(tmp_path / "local", "a.g3")
    manager.add_file(str(local), "16750/a.g3", ARCHIVE)
    handler = _ssh_handler(manager, silent.port, tmp_path, 2.0)
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            handler.copy_files()
    finally:
        handler.close()
    assert silent.take() >= 1
    assert [f.local_path for f in manager.get_copyable_files(ARCHIVE)] == [str(local)]


def test_copy_files_raises_called_process_error_when_the_destination_refuses(
        manager: SupRsyncFilesManager, tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    local = make_file(tmp_path / "local", "a.g3")
    manager.add_file(str(local), "16750/a.g3", ARCHIVE)
    handler = _ssh_handler(manager, port, tmp_path, 5.0)
    try:
        with pytest.raises(subprocess.CalledProcessError):
            handler.copy_files()
    finally:
        handler.close()
    assert [f.local_path for f in manager.get_copyable_files(ARCHIVE)] == [str(local)]


# ------------------------------------------------------- code for the original

DOCS_SNIPPET = """
from {module} import SupRsyncFilesManager, SupRsyncFile

srfm = SupRsyncFilesManager(db_path)
srfm.add_file(local_abspath, 'remote/path/file.g3', 'timestreams')
session = srfm.Session()
files = session.query(SupRsyncFile).filter(
    SupRsyncFile.archive_name == 'timestreams').all()
result = [(f.local_path, f.remote_path, f.archive_name, f.local_md5sum,
           f.failed_copy_attempts, f.deletable, f.ignore, f.remote_md5sum, f.removed)
          for f in files]
copyable = [f.local_path
            for f in srfm.get_copyable_files('timestreams', session=session)]
session.close()
"""


def run_snippet(module: str, db_path: Path, local: Path) -> dict[str, Any]:
    """Execute the docs' example with the given import; return its namespace."""
    namespace: dict[str, Any] = {"db_path": str(db_path), "local_abspath": str(local)}
    exec(DOCS_SNIPPET.format(module=module), namespace)  # noqa: S102
    return namespace


def run_snippet_under_socs(peer_python: Path, db_path: Path, local: Path) -> dict[str, Any]:
    """Execute the docs' example importing from socs in the peer; return result and copyable."""
    snippet = DOCS_SNIPPET.format(module="socs.db.suprsync")
    out = json.loads(run_peer(peer_python, PEER_RUN_SNIPPET, snippet, str(db_path),
                              str(local)).stdout)
    return {"result": [tuple(row) for row in out["result"]], "copyable": out["copyable"]}


def test_docs_snippet_runs_unchanged_with_only_the_import_changed(
    tmp_path: Path, peer_python: Path
) -> None:
    """The docs' add_file example plus a Session query gives the same rows as under socs."""
    local = make_file(tmp_path / "data", "file.g3", b"g3 frames\n" * 100)
    theirs = run_snippet_under_socs(peer_python, tmp_path / "socs" / "suprsync.db", local)
    ours = run_snippet("suprsync", tmp_path / "ours" / "suprsync.db", local)
    expected = [(str(local), "remote/path/file.g3", "timestreams",
                 hashlib.md5(local.read_bytes()).hexdigest(), 0, True, False, None, None)]
    assert theirs["result"] == expected
    assert ours["result"] == expected
    assert ours["copyable"] == theirs["copyable"] == [str(local)]


PEER_DESCRIBE_FLAGS = dedent("""
    import json
    from socs.agents.suprsync.agent import make_parser
    flags = {}
    for action in make_parser()._actions:
        for option in action.option_strings:
            if option.startswith("--") and option != "--help":
                flags[option] = {"default": repr(action.default), "required": action.required}
    print(json.dumps(flags))
""")


def test_run_takes_every_flag_of_the_original_with_its_default(peer_python: Path) -> None:
    """A site config written for socs 0.6.4 starts `suprsync run` unchanged."""
    import argparse

    from suprsync.options import add_run_arguments

    theirs = json.loads(run_peer(peer_python, PEER_DESCRIBE_FLAGS).stdout)
    assert "--archive-name" in theirs and "--chmod" in theirs
    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    ours = {opt: action for action in parser._actions for opt in action.option_strings}
    for flag, spec in theirs.items():
        assert flag in ours, f"{flag} of the original is missing"
        if flag != "--db-path":  # ours also reads $SUPRSYNC_DB
            assert repr(ours[flag].default) == spec["default"], flag


def test_core_imports_and_cli_run_without_ocs_or_twisted(tmp_path: Path) -> None:
    """The catalog, transfers and CLI load nothing of OCS or Twisted."""
    import subprocess
    import sys

    probe = ("import sys, suprsync, suprsync.cli, suprsync.agent\n"
             "sys.argv = ['suprsync', 'stats', '--help']\n"
             "try:\n    suprsync.cli.main()\nexcept SystemExit:\n    pass\n"
             "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ocs', 'twisted'))\n"
             "print(bad)\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
