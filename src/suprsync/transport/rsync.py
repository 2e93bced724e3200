"""Building rsync argument lists for a staged tree of symlinks."""

from __future__ import annotations

from .base import TransferOptions


def rsync_argv(options: TransferOptions, source_dir: str, destination: str,
               force: bool = False, remote_shell: str | None = None) -> list[str]:
    """Arguments for rsync reading NUL-separated relative paths on stdin.

    The source tree holds one symlink per file, named as on the remote; ``-L``
    sends the file it points to. rsync writes each file under a temporary name
    and renames it when complete, so no partial file has its final name.
    ``force`` re-sends files whose size and mtime look unchanged.
    """
    argv = [
        options.rsync,
        "--perms",
        "--times",
        "--copy-links",
        "--from0",
        "--files-from=-",
        "--no-inc-recursive",
        # New files have nothing to delta against: send them whole.
        "--whole-file",
    ]
    if options.chmod:
        argv.append(f"--chmod={options.chmod}")
    if options.compression:
        argv.append("--compress")
    if options.bwlimit:
        argv.append(f"--bwlimit={options.bwlimit}")
    if force:
        argv.append("--ignore-times")
    if remote_shell is not None:
        argv += ["--protect-args", "-e", remote_shell]
    argv += ["--", source_dir.rstrip("/") + "/", destination]
    return argv


def files_from(rel_paths: list[str]) -> bytes:
    """NUL-separated paths, as xargs -0 reads them."""
    return b"".join(p.encode("utf-8", "surrogateescape") + b"\0" for p in rel_paths)


def rsync_files_from(rel_paths: list[str]) -> bytes:
    """The --files-from list: paths prefixed with ./ (rsync skips lines starting # or ;)."""
    return files_from(["./" + p for p in rel_paths])
