"""Where bytes go: kinds of destination, each registered by URL scheme (see registry.py).

Callers open a destination with ``open_destination`` and use the ``Transport``
interface; no caller imports a kind.
"""

from .base import (
    Access,
    Blame,
    Capabilities,
    FileFailure,
    SendResult,
    SendStatus,
    StagingFailed,
    TransferOptions,
    Transport,
    TransportError,
)
from .destination import Destination, DestinationError, parse_destination
from .registry import open_destination, register, remove_leftovers

__all__ = ["Access", "Blame", "Capabilities", "Destination", "DestinationError", "FileFailure",
           "LocalTransport", "SendResult", "SendStatus", "SshOptions", "SshTransport",
           "StagingFailed", "TransferOptions", "Transport", "TransportError", "make_transport",
           "open_destination", "parse_destination", "register", "remove_leftovers"]


def make_transport(remote_basedir: str, options: TransferOptions,
                   ssh: Access | None = None) -> Transport:
    """The transport of the original's flags: over ssh when ``ssh`` names a host.

    ``ssh`` is an SshOptions (its ``host`` the login); kept for callers of the
    flag form, which ``open_destination`` with ``Destination.from_flags`` replaces.
    """
    host = getattr(ssh, "host", None) or None
    return open_destination(Destination.from_flags(remote_basedir, host), options, ssh)


def __getattr__(name: str) -> object:
    """The concrete kinds, for code that names one (tests); imported only when asked for."""
    if name in ("LocalTransport",):
        from .local import LocalTransport

        return LocalTransport
    if name in ("SshOptions", "SshTransport"):
        from . import ssh

        return getattr(ssh, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
