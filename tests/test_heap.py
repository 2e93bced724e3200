"""release_free_memory: freed heap memory goes back to the system."""

from __future__ import annotations

from suprsync import heap


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_release_free_memory_returns_the_holes_a_large_step_left_in_the_heap() -> None:
    assert heap._TRIM is not None, "glibc's malloc_trim is expected on this platform"
    # 40 MB in blocks below the mmap threshold; every tenth is kept, so the freed
    # ones are holes inside the heap that free() alone does not give back.
    blocks = [bytearray(100_000) for _ in range(400)]
    kept = blocks[::10]
    del blocks
    before = _rss_kib()
    heap.release_free_memory()
    after = _rss_kib()
    assert before - after > 20_000, (before, after)
    assert len(kept) == 40
