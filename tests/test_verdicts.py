"""The pure rules that judge a remote copy, table by table; and the one re-queueing."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from sqlalchemy import select
from test_layers import ROOT

from suprsync.catalog.requeue import requeue_row
from suprsync.catalog.schema import PinnedFile, SupRsyncFile
from suprsync.catalog.store import SupRsyncFilesManager
from suprsync.verdicts import (
    MD5_MISMATCH,
    MISSING,
    MTIME_MISMATCH,
    SIZE_MISMATCH,
    VERIFIED,
    judge_audit,
    judge_before_delete,
    judge_copy,
)

A, B = "a" * 32, "b" * 32


@pytest.mark.parametrize(("local", "remote", "kind"), [
    (A, A, VERIFIED),
    (A, B, MD5_MISMATCH),
    (A, None, MISSING),
    (None, A, MD5_MISMATCH),
    (None, None, MISSING),
])
def test_judge_copy(local: str | None, remote: str | None, kind: str) -> None:
    verdict = judge_copy(local, remote)
    assert verdict.kind == kind
    assert verdict.ok is (kind == VERIFIED)
    assert bool(verdict.detail) is not verdict.ok


@pytest.mark.parametrize(("remote_size", "remote_mtime", "remote_md5", "check_md5", "kind"), [
    (10, 100, None, False, VERIFIED),
    (10, 100, A, True, VERIFIED),
    (None, None, None, False, MISSING),
    (None, None, A, True, MISSING),
    (11, 100, A, True, SIZE_MISMATCH),
    (10, 99, A, True, MTIME_MISMATCH),
    (10, 100, B, True, MD5_MISMATCH),
    (10, 100, None, True, MD5_MISMATCH),
    (10, 100, B, False, VERIFIED),  # md5 not asked for
])
def test_judge_before_delete(remote_size: int | None, remote_mtime: int | None,
                             remote_md5: str | None, check_md5: bool, kind: str) -> None:
    verdict = judge_before_delete(A, 10, 100.7, remote_size, remote_mtime, remote_md5,
                                  check_md5)
    assert verdict.kind == kind
    assert verdict.ok is (kind == VERIFIED)


@pytest.mark.parametrize(("remote_size", "local_size", "remote_md5", "check_md5", "kind",
                          "detail"), [
    (10, 10, None, False, VERIFIED, ""),
    (None, 10, A, True, MISSING, "no such file on the remote"),
    (11, 10, A, True, SIZE_MISMATCH, "remote copy has 11 bytes, the local file 10"),
    (11, None, A, True, VERIFIED, ""),  # the local file cannot speak for the copy
    (10, 10, None, True, MD5_MISMATCH, "the remote md5 could not be computed"),
    (10, 10, B, True, MD5_MISMATCH, f"remote md5 {B}, catalog {A}"),
    (10, 10, B, False, VERIFIED, ""),
])
def test_judge_audit(remote_size: int | None, local_size: int | None, remote_md5: str | None,
                     check_md5: bool, kind: str, detail: str) -> None:
    verdict = judge_audit(A, remote_size, local_size, remote_md5, check_md5)
    assert (verdict.kind, verdict.detail) == (kind, detail)


@pytest.mark.parametrize(("remote", "local_md5", "observed", "pinned", "md5_after"), [
    (A, None, None, True, A),   # verified, same bytes: pinned
    (A, A, B, True, A),          # verified, same bytes given again: pinned
    (A, B, None, False, B),      # verified, new bytes: not pinned
    (None, None, None, False, A),  # never verified: nothing to pin
])
def test_requeue_row(tmp_path: Path, remote: str | None, local_md5: str | None,
                     observed: str | None, pinned: bool, md5_after: str) -> None:
    manager = SupRsyncFilesManager(str(tmp_path / "catalog.db"))
    row = manager.add_file("/data/x.dat", "12345/x.dat", "arch", local_md5sum=A, timestamp=1.0)
    manager.write(lambda s: s.get(SupRsyncFile, row.id).__setattr__("remote_md5sum", remote))
    manager.write(lambda s: s.get(SupRsyncFile, row.id).__setattr__("failed_copy_attempts", 3))
    assert manager.write(lambda s: requeue_row(s, s.get(SupRsyncFile, row.id), observed,
                                               local_md5, reset_attempts=True))
    after = manager.read(lambda s: s.get(SupRsyncFile, row.id))
    assert (after.remote_md5sum, after.local_md5sum, after.failed_copy_attempts) == (
        observed, md5_after, 0)
    pins = manager.read(lambda s: list(s.scalars(select(PinnedFile.md5))))
    assert pins == ([A] if pinned else [])
    manager.close()


def test_requeue_leaves_a_removed_file_alone(tmp_path: Path) -> None:
    manager = SupRsyncFilesManager(str(tmp_path / "catalog.db"))
    row = manager.add_file("/data/x.dat", "12345/x.dat", "arch", local_md5sum=A, timestamp=1.0)
    manager.write(lambda s: s.get(SupRsyncFile, row.id).__setattr__("remote_md5sum", A))
    manager.mark_removed(row.id, 5.0)
    manager.requeue(row.id)
    assert manager.read(lambda s: s.get(SupRsyncFile, row.id)).remote_md5sum == A
    manager.close()


def remote_md5_writes(path: Path) -> list[int]:
    """Lines of a module that set remote_md5sum: an assignment to the attribute, a
    ``remote_md5sum=`` keyword, or a ``"remote_md5sum"`` key set in a dict."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[ast.AST] = []
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        for t in targets:
            if isinstance(t, ast.Attribute) and t.attr == "remote_md5sum":
                lines.append(node.lineno)
            if (isinstance(t, ast.Subscript) and isinstance(t.slice, ast.Constant)
                    and t.slice.value == "remote_md5sum"):
                lines.append(node.lineno)
        if isinstance(node, ast.keyword) and node.arg == "remote_md5sum":
            lines.append(node.value.lineno)
    return lines


def test_only_requeue_row_forgets_a_verification() -> None:
    """Setting remote_md5sum is recording a verdict (record_results), forgetting one
    (requeue_row), or marking a superseded row ignored (resolve); nothing else."""
    allowed = {"catalog/requeue.py": 1, "catalog/store.py": 1, "catalog/resolve.py": 1,
               # A further destination's own verdicts and requeues (its copies table).
               "catalog/destqueue.py": 2}
    found = {str(p.relative_to(ROOT)): len(hits) for p in sorted(ROOT.rglob("*.py"))
             if (hits := remote_md5_writes(p))}
    assert found == allowed
