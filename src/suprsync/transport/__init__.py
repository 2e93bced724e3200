"""Where bytes go: a destination on this host or on a host reached over ssh."""

from .base import TransferOptions, Transport, TransportError
from .local import LocalTransport
from .ssh import SshOptions, SshTransport

__all__ = ["LocalTransport", "SshOptions", "SshTransport", "Transport", "TransferOptions",
           "TransportError", "make_transport"]


def make_transport(remote_basedir: str, options: TransferOptions,
                   ssh: SshOptions | None = None) -> Transport:
    """The transport for a destination: over ssh when ssh options with a host are given."""
    if ssh is not None and ssh.host:
        return SshTransport(remote_basedir, options, ssh)
    return LocalTransport(remote_basedir, options)
