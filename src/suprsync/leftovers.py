"""Private temporary dirs left behind by runs that were killed: finding and removing them.

Such dirs are named ``<prefix><pid>-<random>``; one whose pid no longer runs is stale.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists (perhaps another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_dirs(prefix: str, before_remove: Callable[[str], object] | None = None) -> int:
    """Delete the ``<prefix><pid>-*`` dirs of dead processes in the temp dir and /tmp.

    ``before_remove`` is called with each one first (to end what still uses it).
    """
    removed = 0
    for root in {tempfile.gettempdir(), "/tmp"}:
        try:
            names = os.listdir(root)
        except OSError:
            continue
        for name in names:
            if not name.startswith(prefix):
                continue
            pid, sep, _ = name.removeprefix(prefix).partition("-")
            if not sep or not pid.isdigit() or int(pid) == os.getpid() or pid_alive(int(pid)):
                continue
            folder = os.path.join(root, name)
            if before_remove is not None:
                before_remove(folder)
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed
