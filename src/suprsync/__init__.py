"""suprsync: ship files registered in a catalog to a remote archive, verified by md5.

The names below are the Python API of the original SupRsync agent's db module.
"""

from .catalog.schema import SupRsyncFile, TimecodeDir
from .catalog.store import SupRsyncFilesManager, create_file
from .handler import SupRsyncFileHandler

__all__ = ["SupRsyncFile", "SupRsyncFileHandler", "SupRsyncFilesManager", "TimecodeDir",
           "create_file"]
__version__ = "0.1.0"
