"""An rsync daemon module (``rsync://[user@]host[:port]/module[/path]``): no shell at all.

The password of an ``auth users`` module comes from ``--password-file`` or from
RSYNC_PASSWORD; with neither, an empty RSYNC_PASSWORD is passed so that rsync
fails at once instead of asking on a terminal.
"""

from __future__ import annotations

import math
import os

from .base import Access, TransferOptions
from .destination import Destination
from .registry import register
from .rsync import RsyncTransport
from .rsyncproto import RSYNC_PROTOCOL_CAPABILITIES, RsyncOnly, RsyncProtocol, remove_stale_work

CAPABILITIES = RSYNC_PROTOCOL_CAPABILITIES


class RsyncdTransport(RsyncOnly, RsyncTransport):
    """rsync to a daemon module; checksums, stat and listing are dry-run pulls."""

    def __init__(self, host: str, path: str, options: TransferOptions, user: str | None = None,
                 port: int | None = None, password_file: str | None = None,
                 serialize: bool = False) -> None:
        """``path``: the module, then a path inside it (``module/sub/dir``)."""
        super().__init__(path.strip("/"), options)
        self.host = host
        self.user = user
        self.port = port
        self.password_file = password_file
        self.proto = RsyncProtocol(options, self.children, self.describe(), serialize)

    def describe(self) -> str:
        return self._remote()

    def _remote(self) -> str:
        who = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        return f"rsync://{who}{self.host}{port}/{self.remote_basedir}"

    def _extra(self) -> list[str]:
        extra = []
        if self.password_file:
            extra.append(f"--password-file={self.password_file}")
        if self.options.cmd_timeout:
            extra.append(f"--contimeout={max(1, math.ceil(self.options.cmd_timeout))}")
        return extra

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        if not self.password_file:
            env.setdefault("RSYNC_PASSWORD", "")
        return env


@register("rsync", remove_leftovers=remove_stale_work)
def open_rsyncd(destination: Destination, options: TransferOptions,
                access: Access) -> RsyncdTransport:
    """A module (and a path in it) of an rsync daemon; the password from ``access``."""
    path = "/".join(p for p in (destination.module, destination.path) if p)
    return RsyncdTransport(destination.host or "", path, options, user=destination.user,
                           port=destination.port or access.port,
                           password_file=access.password_file)
