"""ssh to a key forced to rrsync (``--remote-shell=no``): only rsync runs on the far side.

The archive host's authorized_keys locks the key to one directory with
``command="rrsync DIR",restrict``; the base dir is a path inside DIR (rrsync reads a
leading ``/`` as DIR itself). rrsync refuses ``--protect-args``, so no name is ever
an argument: names travel in the ``--files-from`` list. By default rrsync runs one
session of the user at a time (a second one dies), so sessions are serialized.
"""

from __future__ import annotations

import shlex

from .base import TransferOptions
from .rsyncproto import RSYNC_PROTOCOL_CAPABILITIES, RsyncOnly, RsyncProtocol
from .ssh import SshOptions, SshTransport

CAPABILITIES = RSYNC_PROTOCOL_CAPABILITIES


class RrsyncTransport(RsyncOnly, SshTransport):
    """rsync over ssh to a key restricted with rrsync; every check is an rsync session.

    ``serialize=False`` only for a key whose rrsync runs with ``-no-lock``.
    """

    def __init__(self, remote_basedir: str, options: TransferOptions, ssh: SshOptions,
                 serialize: bool = True) -> None:
        super().__init__(remote_basedir, options, ssh)
        self.proto = RsyncProtocol(options, self.children, self.describe(), serialize)

    def describe(self) -> str:
        return f"{self.ssh.host}:{self.remote_basedir} (rrsync)"

    def _remote(self) -> str:
        return f"{self.ssh.host}:{self.remote_basedir.rstrip('/') or '/'}"

    def _extra(self) -> list[str]:
        return ["-e", " ".join(shlex.quote(a) for a in self.ssh_argv())]
