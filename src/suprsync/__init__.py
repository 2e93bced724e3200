"""suprsync: ship files registered in a catalog to a remote archive, verified by md5.

The names below are the Python API of the original SupRsync agent's db module.
They are loaded on first use, so that commands which do not need the catalog
code start without it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .catalog.schema import SupRsyncFile, TimecodeDir
    from .catalog.store import SupRsyncFilesManager, create_file
    from .handler import SupRsyncFileHandler

__all__ = ["SupRsyncFile", "SupRsyncFileHandler", "SupRsyncFilesManager", "TimecodeDir",
           "create_file"]
__version__ = "0.1.0"

_HOMES = {"SupRsyncFile": ".catalog.schema", "TimecodeDir": ".catalog.schema",
          "SupRsyncFilesManager": ".catalog.store", "create_file": ".catalog.store",
          "SupRsyncFileHandler": ".handler"}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
