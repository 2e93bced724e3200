"""Giving the free memory of the C heap back to the system between large steps."""

from __future__ import annotations

import ctypes
from collections.abc import Callable


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc
    except (OSError, AttributeError):
        return None


_TRIM = _malloc_trim()


def release_free_memory() -> None:
    """Return the free pages of every malloc arena to the system (glibc; elsewhere nothing).

    Threads allocate from arenas of their own, and what they free stays with the
    process until it is trimmed.
    """
    if _TRIM is not None:
        _TRIM(0)
