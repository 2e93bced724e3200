"""``suprsync run`` and ``suprsync audit`` with ``--destination URL``: real rsync, real sshd."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from conftest import SshServer, run_cli
from invariants import check_invariants

from suprsync import SupRsyncFilesManager

ARCHIVE = "smurf"


def register(tmp_path: Path, db: Path, files: dict[str, bytes]) -> None:
    manager = SupRsyncFilesManager(str(db), create_all=True)
    try:
        for rel, data in files.items():
            local = tmp_path / "local" / rel.replace("/", "_")
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(data)
            manager.add_file(str(local), rel, ARCHIVE, local_md5sum=hashlib.md5(data).hexdigest())
    finally:
        manager.engine.dispose()


def run_once(tmp_path: Path, db: Path, *destination: str):  # type: ignore[no-untyped-def]
    return run_cli("run", "--once", "--archive-name", ARCHIVE, "--db-path", str(db),
                   "--suprsync-file-root", str(tmp_path / "srf"), "--sleep-time", "0",
                   *destination, timeout=90)


@pytest.mark.parametrize("form", ["path", "file-url", "ssh-url"])
def test_run_and_audit_with_a_destination_url(form: str, tmp_path: Path, tmp_catalog: Path,
                                               sshd: SshServer) -> None:
    remote = tmp_path / "remote"
    files = {"16750/a.g3": b"a" * 100, "16750/-b #;.g3": b"b" * 10}
    register(tmp_path, tmp_catalog, files)
    ssh_flags = ["--ssh-key", str(sshd.key), "--ssh-known-hosts", str(sshd.known_hosts)]
    url, extra = {
        "path": (str(remote), []),
        "file-url": (f"file://{remote}", []),
        "ssh-url": (f"ssh://{sshd.destination}:{sshd.port}{remote}", ssh_flags),
    }[form]
    result = run_once(tmp_path, tmp_catalog, "--destination", url, *extra)
    assert result.returncode == 0, result.stderr
    for rel, data in files.items():
        assert (remote / rel).read_bytes() == data
    audit = run_cli("audit", ARCHIVE, "--db", str(tmp_catalog), "--destination", url, "--md5",
                    *extra, timeout=60)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "OK: the destination matches the catalog" in audit.stdout
    check_invariants(str(tmp_catalog), {ARCHIVE: remote}, file_root=tmp_path / "srf")


@pytest.mark.parametrize(("flags", "says"), [
    ([], "no destination given"),
    (["--destination", "archive/dir"], "is neither an absolute path nor a URL"),
    (["--destination", "ftp://host/srv"], "unknown destination scheme 'ftp'"),
    (["--destination", "/srv/a", "--remote-basedir", "/srv/a"], "not both"),
])
def test_a_bad_destination_is_one_line_at_start(flags: list[str], says: str, tmp_path: Path,
                                                tmp_catalog: Path) -> None:
    register(tmp_path, tmp_catalog, {"16750/a.g3": b"a"})
    result = run_once(tmp_path, tmp_catalog, *flags)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("suprsync run: error:"), result.stderr
    assert says in lines[0]
    audit = run_cli("audit", ARCHIVE, "--db", str(tmp_catalog), *flags, timeout=60)
    assert audit.returncode == 2 and says in audit.stderr, audit.stderr
