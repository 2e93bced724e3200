"""SupRsyncFileHandler: the original agent's copy/delete API, built on the same steps
(:mod:`suprsync.steps`) as the agent loop, with the catalog's clock."""

from __future__ import annotations

import subprocess

from . import steps
from .catalog.store import SupRsyncFilesManager
from .copying import CopyReport, Pipeline, default_agent_id
from .deletion import DeleteReport
from .retention import Policy
from .transport import (
    Access,
    Destination,
    TransferOptions,
    Transport,
    TransportError,
    open_destination,
)


class SupRsyncFileHandler:
    """Copies one archive's files to a remote (or local) base dir and deletes old local copies."""

    def __init__(
        self,
        file_manager: SupRsyncFilesManager,
        archive_name: str,
        remote_basedir: str,
        ssh_host: str | None = None,
        ssh_key: str | None = None,
        cmd_timeout: float | None = None,
        copy_timeout: float | None = None,
        compression: bool | None = None,
        bwlimit: str | None = None,
        chmod: str | None = None,
        ssh_options: Access | None = None,
        transport: Transport | None = None,
        pipeline: Pipeline | None = None,
        agent_id: str | None = None,
    ) -> None:
        self.srfm = file_manager
        self.archive_name = archive_name
        self.remote_basedir = remote_basedir
        self.ssh_host = ssh_host
        self.ssh_key = ssh_key
        self.cmd_timeout = cmd_timeout
        self.copy_timeout = copy_timeout
        self.compression = bool(compression)
        self.bwlimit = bwlimit
        self.chmod = chmod
        if transport is None:
            options = TransferOptions(compression=self.compression, bwlimit=bwlimit, chmod=chmod,
                                      copy_timeout=copy_timeout, cmd_timeout=cmd_timeout)
            host = getattr(ssh_options, "host", None) or ssh_host
            transport = open_destination(Destination.from_flags(remote_basedir, host), options,
                                         ssh_options or Access(key=ssh_key))
        self.transport = transport
        self.pipeline = pipeline or Pipeline()
        self.agent_id = agent_id or default_agent_id(archive_name)
        #: What the steps remember between calls (the waits and kept files logged).
        self.memory = steps.Memory()

    def _settings(self, max_copy_attempts: int | None = None, num_files: int | None = None,
                  policy: Policy | None = None) -> steps.Settings:
        return steps.Settings(archive_name=self.archive_name, agent_id=self.agent_id,
                              pipeline=self.pipeline, max_copy_attempts=max_copy_attempts,
                              num_files=num_files, policy=policy)

    def copy_report(self, max_copy_attempts: int | None = None,
                    num_files: int | None = None, reach_first: bool = True) -> CopyReport:
        """Copy and verify one batch; the full report of what happened.

        Raises TransportError when the destination cannot be reached (with
        ``reach_first``, also when nothing is copyable).
        """
        settings = self._settings(max_copy_attempts=max_copy_attempts, num_files=num_files)
        return steps.copy(self.srfm, self.transport, self.srfm.clock, settings, self.memory,
                          reach_first=reach_first)

    def copy_files(self, max_copy_attempts: int | None = None,
                   num_files: int | None = None) -> list[tuple[str, bool]]:
        """Copy and verify one batch; return ``[(local_path, md5_ok), ...]``.

        Like the original, a transfer that timed out raises subprocess.TimeoutExpired
        and one that failed, or a destination that cannot be reached, raises
        subprocess.CalledProcessError (after recording whatever was verified). With
        nothing copyable it returns ``[]`` without reaching the destination.
        """
        try:
            report = self.copy_report(max_copy_attempts, num_files, reach_first=False)
        except TransportError as exc:
            if exc.timed_out:
                raise subprocess.TimeoutExpired(["ssh"], self.cmd_timeout or 0,
                                                output=str(exc)) from exc
            raise subprocess.CalledProcessError(255, ["ssh"], output=str(exc)) from exc
        if report.timed_out:
            raise subprocess.TimeoutExpired(["rsync"], self.copy_timeout or 0)
        if report.failed:
            raise subprocess.CalledProcessError(1, ["rsync"])
        return [(path, ok) for path, ok in report.files]

    def delete_files(self, delete_after: float) -> DeleteReport:
        """Delete local copies verified on the remote and older than delete_after s.

        Each remote copy is checked again (exists, same size and mtime) first.
        """
        settings = self._settings(policy=Policy.delete_after(delete_after))
        return steps.delete(self.srfm, self.transport, self.srfm.clock, settings, self.memory)

    def close(self) -> None:
        """Release the transport's connections."""
        self.transport.close()
