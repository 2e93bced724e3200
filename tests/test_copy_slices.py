"""A copy step claims its batch in slices and stops at the first short one."""

from __future__ import annotations

from pathlib import Path

from helpers import (
    ARCHIVE,
    T0,
    clock_fixture,  # noqa: F401 - the clock fixture
    file_adder,
    is_synced,
    manager_fixture,  # noqa: F401 - the manager fixture
)

from suprsync.catalog.store import SupRsyncFilesManager
from suprsync.copying import Pipeline, copy_batch
from suprsync.transport import TransferOptions, make_transport


def _copy_counting_claims(manager: SupRsyncFilesManager, remote: Path,
                          slice_files: int) -> tuple[int, list[int]]:
    """Run one copy step; (claims made, sizes of the slices claimed)."""
    real_claim = manager.claim_copyable
    slices: list[int] = []

    def claim(*args, **kwargs):  # type: ignore[no-untyped-def]
        rows = real_claim(*args, **kwargs)
        slices.append(len(rows))
        return rows

    manager.claim_copyable = claim  # type: ignore[method-assign]
    transport = make_transport(str(remote), TransferOptions(), None)
    try:
        report = copy_batch(manager, transport, ARCHIVE, clock=manager.clock,
                            pipeline=Pipeline(slice_files=slice_files))
    finally:
        transport.close()
        del manager.claim_copyable
    assert not report.failed
    return len(slices), slices


def test_short_slice_ends_the_step(manager: SupRsyncFilesManager, tmp_path: Path) -> None:
    add = file_adder(manager, tmp_path / "data")
    file_ids = [add(T0 - 100 + i) for i in range(5)]
    claims, slices = _copy_counting_claims(manager, tmp_path / "remote", slice_files=2)
    assert slices == [2, 2, 1]  # full slices go on; the short one was the last
    assert claims == 3
    assert all(is_synced(manager, i) for i in file_ids)


def test_full_last_slice_looks_once_more(manager: SupRsyncFilesManager,
                                         tmp_path: Path) -> None:
    add = file_adder(manager, tmp_path / "data")
    file_ids = [add(T0 - 100 + i) for i in range(4)]
    _, slices = _copy_counting_claims(manager, tmp_path / "remote", slice_files=2)
    assert slices == [2, 2, 0]
    assert all(is_synced(manager, i) for i in file_ids)
