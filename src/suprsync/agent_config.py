"""The settings of one agent, light to import (no catalog code)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .transport import Access, TransferOptions, open_destination
from .transport.destination import Destination, parse_destination

if TYPE_CHECKING:
    from .catalog.copies import Wanted
    from .retention import MinFree, Policy
    from .transport import Transport


@dataclass
class AgentConfig:
    """Everything one agent needs; field names follow the command-line flags.

    The destination is ``destination`` (a URL) when set, else ``remote_basedir``
    on ``ssh_host`` (or on this host), as the original's flags name it.
    """

    archive_name: str
    remote_basedir: str
    db_path: str
    suprsync_file_root: str
    ssh_host: str | None = None
    ssh_key: str | None = None
    delete_local_after: float | None = None
    max_copy_attempts: int = 5
    copy_timeout: float | None = None
    cmd_timeout: float | None = None
    files_per_batch: int | None = None
    sleep_time: float = 60.0
    compression: bool = False
    bwlimit: str | None = None
    chmod: str | None = "g+rwX,o+rX"
    db_echo: bool = False
    db_pool_size: int = 5
    db_pool_max_overflow: int = 10
    instance_id: str = "suprsync"
    ssh_port: int | None = None
    ssh_known_hosts: str | None = None
    ssh_options: tuple[str, ...] = field(default_factory=tuple)
    verify_before_delete: bool = False
    parallel: int = 1
    ssh_reuse_connection: bool = True
    #: False: --remote-shell=no (an ssh key forced to rrsync).
    remote_shell: bool = True
    rsync_password_file: str | None = None
    claim_timeout: float = 600.0
    #: Retention rules (--retention); None: --delete-local-after for every file.
    retention: Policy | None = None
    min_free: MinFree | None = None
    remove_empty_dirs: bool = False
    local_root: str | None = None
    #: --on-finalize program and arguments, and --on-finalize-url.
    on_finalize: tuple[str, ...] = ()
    on_finalize_url: str | None = None
    #: The destination as a URL (--destination); replaces remote_basedir and ssh_host.
    destination: str | None = None
    #: The first destination's --destination-id (None: made from its URL).
    destination_id: str | None = None
    #: (id or None, URL) of the further destinations, in order.
    more_destinations: tuple[tuple[str | None, str], ...] = ()
    #: --min-copies (None: every destination of the archive).
    min_copies: int | None = None

    def policy(self) -> Policy | None:
        """The rules the deletion step applies; None when it does not run."""
        if self.retention is not None:
            return self.retention
        if self.delete_local_after is not None or self.min_free is not None:
            from .retention import Policy

            return Policy.delete_after(self.delete_local_after)
        return None

    def transfer_options(self) -> TransferOptions:
        """rsync settings of this config."""
        return TransferOptions(compression=self.compression, bwlimit=self.bwlimit,
                               chmod=self.chmod, copy_timeout=self.copy_timeout,
                               cmd_timeout=self.cmd_timeout)

    def destination_spec(self) -> Destination:
        """Where files go (DestinationError for a URL that names no usable place)."""
        if self.destination:
            return parse_destination(self.destination)
        return Destination.from_flags(self.remote_basedir, self.ssh_host)

    def access(self) -> Access:
        """How to log in to a remote destination: the --ssh-* settings of this config."""
        return Access(key=self.ssh_key, port=self.ssh_port, known_hosts=self.ssh_known_hosts,
                      connect_timeout=self.cmd_timeout or 20.0,
                      extra_options=tuple(self.ssh_options),
                      reuse_connection=self.ssh_reuse_connection,
                      remote_shell=self.remote_shell,
                      password_file=self.rsync_password_file)

    def open_transport(self) -> Transport:
        """A transport to this config's destination (not reached yet)."""
        return open_destination(self.destination_spec(), self.transfer_options(), self.access())

    def wanted_destinations(self) -> list[Wanted]:
        """Every destination of this config, with its id (the first one first)."""
        from .catalog.copies import Wanted, default_destination_id

        first = self.destination_spec().url()
        out = [Wanted(self.destination_id or default_destination_id(first), first,
                      self.destination_id is not None)]
        for name, url in self.more_destinations:
            url = parse_destination(url).url()
            out.append(Wanted(name or default_destination_id(url), url, name is not None))
        return out

    def open_more_transports(self) -> list[Transport]:
        """A transport to each further destination (the same flags, its own URL)."""
        access = self.access()
        return [open_destination(parse_destination(url), self.transfer_options(), access)
                for _, url in self.more_destinations]
