"""Command-line flags: those of ``run`` (the original agent's, same names and defaults)
with their checks, and those of ``audit``."""

from __future__ import annotations

import argparse
import math
import os
import shutil
import stat
import subprocess
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .agent_config import AgentConfig
    from .retention import MinFree, Policy
    from .transport.destination import Destination

DEFAULT_CHMOD = "g+rwX,o+rX"
#: Rows per catalog page and per remote call.
DEFAULT_BATCH = 1000
#: Entries kept per category for --json; counts stay exact beyond it.
DEFAULT_LIST_LIMIT = 100_000


#: What --destination takes.
DESTINATION_HELP = ("where files go: /abs/path, file:///abs/path, "
                    "ssh://[user@]host[:port]/abs/path or rsync://[user@]host[:port]/module[/path]")


class ConfigError(ValueError):
    """A flag value or the environment makes the agent unable to start."""


def destination_from_args(ns: argparse.Namespace) -> Destination:
    """The destination the flags name: --destination, or --remote-basedir [--ssh-host].

    ConfigError, naming the flags, when they name none or two.
    """
    from .transport.destination import Destination, DestinationError, parse_destination

    url = getattr(ns, "destination", None)
    if url is None:
        if not ns.remote_basedir:
            raise ConfigError("no destination given: use --destination URL (or "
                              "--remote-basedir DIR, with --ssh-host for a remote host)")
        return Destination.from_flags(ns.remote_basedir, ns.ssh_host)
    if ns.remote_basedir is not None:
        raise ConfigError("give the destination once: --destination or --remote-basedir, "
                          "not both")
    if ns.ssh_host is not None:
        raise ConfigError("--ssh-host cannot go with --destination: put the host in the URL "
                          "(ssh://[user@]host[:port]/abs/path)")
    try:
        spec = parse_destination(url)
    except DestinationError as exc:
        raise ConfigError(f"--destination: {exc}") from None
    port = getattr(ns, "ssh_port", None)
    if spec.port is not None and port is not None and spec.port != port:
        raise ConfigError(f"--destination has port {spec.port} but --ssh-port is {port}")
    return spec


def _positive(kind: type):  # type: ignore[no-untyped-def]
    def parse(text: str):  # type: ignore[no-untyped-def]
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
        if value < 0:
            raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
        return value

    parse.__name__ = kind.__name__
    return parse


def at_least_one(text: str) -> int:
    """argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def add_run_arguments(parser: argparse.ArgumentParser, instance_id: bool = True) -> None:
    """Add every flag of the original agent, plus suprsync's own.

    ``instance_id=False`` leaves out --instance-id for front ends (OCS) that add it.
    """
    env_db = os.environ.get("SUPRSYNC_DB")
    g = parser.add_argument_group("Agent Options")
    g.add_argument("--archive-name", required=True,
                   help="Name of managed archive. Determines which files should be copied")
    g.add_argument("--remote-basedir", default=None,
                   help="Base directory on the remote server where files will be copied "
                        "(or give --destination)")
    g.add_argument("--db-path", "--db", dest="db_path", default=env_db,
                   help="Path to the suprsync sqlite db (default: $SUPRSYNC_DB)")
    g.add_argument("--ssh-host", default=None,
                   help="Remote host to copy files to (e.g. '<user>@<host>'). "
                        "If None, will copy files locally")
    g.add_argument("--ssh-key", default=None, help="Path to ssh-key needed to access remote host")
    g.add_argument("--delete-local-after", type=_positive(float), default=None,
                   help="Time (sec) after which this agent will delete local copies of "
                        "successfully transferred files. If None, will not delete files.")
    g.add_argument("--max-copy-attempts", type=_positive(int), default=5,
                   help="Number of failed copy attempts before the agent will stop trying to "
                        "copy a file (default: 5)")
    g.add_argument("--copy-timeout", type=_positive(float), default=None,
                   help="Time (sec) before the rsync command will timeout")
    g.add_argument("--cmd-timeout", type=_positive(float), default=None,
                   help="Time (sec) before remote commands will timeout")
    g.add_argument("--files-per-batch", type=_positive(int), default=None,
                   help="Number of files to copy over per batch. Default is None, which will "
                        "copy over all available files.")
    g.add_argument("--sleep-time", type=_positive(float), default=60,
                   help="Time to sleep (sec) in between copy iterations (default: 60)")
    g.add_argument("--compression", action="store_true", default=False,
                   help="Activate gzip on data transfer (rsync -z)")
    g.add_argument("--bwlimit", default=None, help="Bandwidth limit arg (passed through to rsync)")
    g.add_argument("--suprsync-file-root", required=True,
                   help="Local path where agent will write suprsync files")
    g.add_argument("--db-echo", action="store_true", help="Echos db queries")
    g.add_argument("--db-pool-size", type=_positive(int), default=5,
                   help="Number of connections to the catalog to keep open (default: 5)")
    g.add_argument("--db-pool-max-overflow", type=_positive(int), default=10,
                   help="Number of connections allowed beyond the pool (default: 10)")
    g.add_argument("--chmod", default=DEFAULT_CHMOD,
                   help=f"chmod applied by rsync to copied files (default: {DEFAULT_CHMOD})")
    s = parser.add_argument_group("suprsync options")
    s.add_argument("--destination", action="append", default=None, metavar="URL",
                   help=DESTINATION_HELP + " (instead of --remote-basedir and --ssh-host); "
                        "may be repeated: the archive is shipped to every one")
    s.add_argument("--destination-id", action="append", default=None, metavar="NAME=URL",
                   help="a destination with a stable id NAME (its state survives a change of "
                        "the URL); may be repeated. Without it a destination's id is made "
                        "from its URL")
    s.add_argument("--min-copies", type=at_least_one, default=None, metavar="N",
                   help="delete a local file only once it is verified on at least N "
                        "destinations (default: every destination of the archive)")
    if instance_id:
        s.add_argument("--instance-id", default=None,
                       help="Name of this agent in logs and finalization paths "
                            "(default: suprsync-<archive-name>)")
    s.add_argument("--db-url", default=None, metavar="URL",
                   help="catalog as an SQLAlchemy URL, e.g. postgresql://user@host/db "
                        "(instead of --db-path)")
    s.add_argument("--verify-before-delete", action="store_true",
                   help="re-check the md5 of the remote copy before deleting a local file "
                        "(its size and mtime are always checked)")
    s.add_argument("--parallel", type=_positive(int), default=1, metavar="N",
                   help="rsync streams run at once (default: 1)")
    s.add_argument("--ssh-reuse-connection", action=argparse.BooleanOptionalAction,
                   default=True,
                   help="share one ssh connection among all transfers and checks "
                        "(ControlMaster in a private directory; default: on)")
    s.add_argument("--claim-timeout", type=_positive(float), default=600.0, metavar="S",
                   help="seconds after which files claimed by an agent that died may be "
                        "taken by another agent sharing the catalog (default: 600)")
    s.add_argument("--metrics-port", type=_positive(int), default=None, metavar="PORT",
                   help="serve a status page on /, Prometheus metrics on /metrics and "
                        "the session data on /status at this port (needs suprsync[metrics])")
    s.add_argument("--metrics-host", default="127.0.0.1",
                   help="address the metrics server listens on (default: 127.0.0.1)")
    s.add_argument("--ssh-port", type=_positive(int), default=None, help="ssh port of the host")
    s.add_argument("--ssh-known-hosts", default=None,
                   help="known_hosts file to check the host key against (default: ssh's own)")
    s.add_argument("--ssh-option", action="append", default=[], metavar="KEY=VALUE",
                   help="extra ssh -o option; may be repeated")
    s.add_argument("--remote-shell", choices=("yes", "no"), default="yes",
                   help="no: the ssh key may run nothing but rsync (a key forced to rrsync); "
                        "verification, stat and listing then use the rsync protocol alone "
                        "(default: yes)")
    s.add_argument("--rsync-password-file", default=None, metavar="FILE",
                   help="password of an rsync:// daemon module (default: $RSYNC_PASSWORD)")
    r = parser.add_argument_group("retention options")
    r.add_argument("--retention", default=None, metavar="FILE",
                   help="YAML file of retention rules (first match wins); replaces "
                        "--delete-local-after")
    r.add_argument("--min-free", default=None, metavar="SIZE",
                   help="free space wanted on each file system holding local files (bytes "
                        "with K/M/G/T, or a percentage such as 10%%): below it, verified files "
                        "the rules would delete go early, oldest first")
    r.add_argument("--remove-empty-dirs", action="store_true",
                   help="remove directories left empty by deletions (and their emptied "
                        "parents), below --local-root")
    r.add_argument("--local-root", default=None, metavar="DIR",
                   help="top local data directory: never removed, nothing above it is "
                        "(required with --remove-empty-dirs)")
    e = parser.add_argument_group("event options")
    e.add_argument("--on-finalize", nargs="+", default=None, metavar=("CMD", "ARG"),
                   help="program (and its arguments, none starting with '-') run after a "
                        "timecode dir's finalization file is verified on the destination; "
                        "the file's fields are in SUPRSYNC_* environment variables")
    e.add_argument("--on-finalize-url", default=None, metavar="URL",
                   help="http(s) URL that gets the same fields as a JSON POST")


def retention_from_args(ns: argparse.Namespace) -> tuple[Policy | None, MinFree | None]:
    """The policy and --min-free of the flags; ConfigError with a one-line reason."""
    from .retention import PolicyError, load_policy, parse_min_free

    policy = None
    retention = getattr(ns, "retention", None)
    if retention:
        if getattr(ns, "delete_local_after", None) is not None:
            raise ConfigError("give --retention or --delete-local-after, not both (the file's "
                              "last rule can be match: \"**\")")
        try:
            policy = load_policy(retention)
        except PolicyError as exc:
            raise ConfigError(f"--retention {exc}") from None
    min_free = None
    if getattr(ns, "min_free", None):
        try:
            min_free = parse_min_free(ns.min_free)
        except ValueError as exc:
            raise ConfigError(f"--min-free: {exc}") from None
    return policy, min_free


def hooks_from_args(ns: argparse.Namespace) -> tuple[tuple[str, ...], str | None]:
    """--on-finalize and --on-finalize-url, checked; ConfigError with a one-line reason."""
    command = tuple(getattr(ns, "on_finalize", None) or ())
    if command and not command[0]:
        raise ConfigError("--on-finalize needs a program to run")
    url = getattr(ns, "on_finalize_url", None)
    if url is not None:
        scheme, _, rest = url.partition("://")
        if scheme.lower() not in ("http", "https") or not rest or rest.startswith("/"):
            raise ConfigError(f"--on-finalize-url must be an http:// or https:// URL, "
                              f"not {url!r}")
    return command, url


def password_file_from_args(ns: argparse.Namespace, *specs: Destination) -> str | None:
    """--rsync-password-file for the destinations ``specs``, checked: only an rsync://
    daemon reads one (one of them must be), and rsync refuses one others can read."""
    path = getattr(ns, "rsync_password_file", None)
    if path is None:
        return None
    if not any(spec.scheme == "rsync" for spec in specs):
        urls = ", ".join(spec.url() for spec in specs)
        raise ConfigError(f"--rsync-password-file is read only for rsync:// destinations, "
                          f"not for {urls}: leave it out (ssh logs in with --ssh-key)")
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise ConfigError(f"--rsync-password-file {path!r}: {exc.strerror}") from None
    if mode & 0o077:
        raise ConfigError(f"--rsync-password-file {path!r} can be read by others: "
                          f"chmod 600 it (rsync refuses it otherwise)")
    return os.path.abspath(path)


def remote_shell_from_args(ns: argparse.Namespace, *specs: Destination) -> bool:
    """False for --remote-shell no, which only an ssh destination can honour (one of
    ``specs`` must be ssh: elsewhere the flag would be ignored without a word)."""
    if getattr(ns, "remote_shell", "yes") != "no":
        return True
    if not any(spec.scheme == "ssh" for spec in specs):
        urls = ", ".join(spec.url() for spec in specs)
        raise ConfigError(f"--remote-shell no is for ssh destinations whose key runs only "
                          f"rsync, not for {urls}: leave it out")
    return False


def destinations_from_args(ns: argparse.Namespace) -> list[tuple[str | None, str]]:
    """(id or None, URL) of every --destination and --destination-id, in that order.

    The first is the one the other flags (--remote-basedir, --ssh-port, ...) go with.
    """
    from .catalog.copies import check_destination_id

    out: list[tuple[str | None, str]] = []
    urls = getattr(ns, "destination", None)
    if isinstance(urls, str):
        urls = [urls]
    out += [(None, url) for url in urls or ()]
    for item in getattr(ns, "destination_id", None) or ():
        name, eq, url = item.partition("=")
        if not eq or not url:
            raise ConfigError(f"--destination-id must look like NAME=URL, not {item!r}")
        try:
            out.append((check_destination_id(name), url))
        except ValueError as exc:
            raise ConfigError(f"--destination-id: {exc}") from None
    return out


def config_from_args(ns: argparse.Namespace) -> AgentConfig:
    """Build and check the agent config; raise ConfigError with a one-line reason."""
    from .agent_config import AgentConfig
    from .transport.destination import DestinationError, parse_destination

    given = destinations_from_args(ns)
    first_id = None
    extra: list[tuple[str | None, str]] = []
    if given:
        ns = argparse.Namespace(**vars(ns))
        (first_id, ns.destination), extra = given[0], given[1:]
        if ns.remote_basedir is not None:
            if first_id is None:
                raise ConfigError("give the first destination once: --destination or "
                                  "--remote-basedir, not both")
            first_id, ns.destination, extra = None, None, given
    for _, url in extra:
        try:
            parse_destination(url)
        except DestinationError as exc:
            raise ConfigError(f"--destination {url!r}: {exc}") from None
    if getattr(ns, "min_copies", None) is not None and ns.min_copies > 1 + len(extra):
        raise ConfigError(f"--min-copies {ns.min_copies} is more than the {1 + len(extra)} "
                          f"destination(s) given")

    db_url = getattr(ns, "db_url", None)
    if db_url and ns.db_path and ns.db_path != os.environ.get("SUPRSYNC_DB"):
        raise ConfigError("give the catalog once: --db-path or --db-url, not both")
    db = db_url or ns.db_path
    if not db:
        raise ConfigError("no catalog given: use --db-path PATH, --db-url URL or set "
                          "SUPRSYNC_DB")
    if ns.max_copy_attempts < 1:
        raise ConfigError("--max-copy-attempts must be at least 1")
    metrics_port = getattr(ns, "metrics_port", None)
    if metrics_port is not None and not 1 <= metrics_port <= 65535:
        raise ConfigError(f"--metrics-port must be between 1 and 65535, not {metrics_port}")
    if ns.claim_timeout < 1:
        raise ConfigError("--claim-timeout must be at least 1 second")
    if ns.parallel < 1:
        raise ConfigError("--parallel must be at least 1")
    if ns.files_per_batch is not None and ns.files_per_batch < 1:
        raise ConfigError("--files-per-batch must be at least 1")
    if ns.ssh_host is not None and (not ns.ssh_host.strip() or ns.ssh_host.startswith("-")
                                    or any(c.isspace() for c in ns.ssh_host)):
        raise ConfigError(f"--ssh-host is not a host name: {ns.ssh_host!r}")
    for opt in ns.ssh_option:
        if "=" not in opt:
            raise ConfigError(f"--ssh-option must look like KEY=VALUE, not {opt!r}")
    spec = destination_from_args(ns)
    specs = [spec, *(parse_destination(url) for _, url in extra)]
    policy, min_free = retention_from_args(ns)
    on_finalize, on_finalize_url = hooks_from_args(ns)
    local_root = getattr(ns, "local_root", None)
    remove_empty_dirs = bool(getattr(ns, "remove_empty_dirs", False))
    if remove_empty_dirs and not local_root:
        raise ConfigError("--remove-empty-dirs needs --local-root DIR (the directory it never "
                          "removes nor goes above)")
    if local_root and not os.path.isdir(local_root):
        raise ConfigError(f"--local-root {local_root!r} is not a directory")
    return AgentConfig(
        archive_name=ns.archive_name,
        remote_basedir=ns.remote_basedir if ns.remote_basedir is not None else spec.path,
        destination=getattr(ns, "destination", None),
        db_path=db,
        suprsync_file_root=os.path.abspath(ns.suprsync_file_root),
        ssh_host=ns.ssh_host,
        ssh_key=ns.ssh_key,
        delete_local_after=ns.delete_local_after,
        max_copy_attempts=ns.max_copy_attempts,
        copy_timeout=ns.copy_timeout or None,
        cmd_timeout=ns.cmd_timeout or None,
        files_per_batch=ns.files_per_batch,
        sleep_time=ns.sleep_time,
        compression=ns.compression,
        bwlimit=ns.bwlimit,
        chmod=ns.chmod or None,
        db_echo=ns.db_echo,
        db_pool_size=ns.db_pool_size,
        db_pool_max_overflow=ns.db_pool_max_overflow,
        instance_id=getattr(ns, "instance_id", None) or f"suprsync-{ns.archive_name}",
        ssh_port=ns.ssh_port,
        ssh_known_hosts=ns.ssh_known_hosts,
        ssh_options=tuple(ns.ssh_option),
        verify_before_delete=ns.verify_before_delete,
        parallel=ns.parallel,
        ssh_reuse_connection=ns.ssh_reuse_connection,
        remote_shell=remote_shell_from_args(ns, *specs),
        rsync_password_file=password_file_from_args(ns, *specs),
        claim_timeout=ns.claim_timeout,
        retention=policy,
        min_free=min_free,
        remove_empty_dirs=remove_empty_dirs,
        local_root=os.path.abspath(local_root) if local_root else None,
        on_finalize=on_finalize,
        on_finalize_url=on_finalize_url,
        destination_id=first_id,
        more_destinations=tuple(extra),
        min_copies=getattr(ns, "min_copies", None),
    )


def check_environment(config: AgentConfig) -> None:
    """Fail fast, with a one-line reason, on what would break the agent later."""
    if shutil.which("rsync") is None:
        raise ConfigError("rsync is not installed (no 'rsync' on PATH)")
    _check_rsync_values(config)
    if config.ssh_port is not None and not 1 <= config.ssh_port <= 65535:
        raise ConfigError(f"--ssh-port must be between 1 and 65535, not {config.ssh_port}")
    from .transport.destination import parse_destination
    from .transport.registry import kinds

    for _, url in config.more_destinations:
        extra = parse_destination(url).scheme
        if extra not in kinds():
            raise ConfigError(f"--destination {url}: destinations of kind {extra}:// are not "
                              f"supported by this installation")
        if extra == "ssh" and shutil.which("ssh") is None:
            raise ConfigError(f"ssh is not installed (no 'ssh' on PATH) but {url} is reached "
                              f"with ssh")
    scheme = config.destination_spec().scheme
    if scheme not in kinds():
        raise ConfigError(f"--destination: destinations of kind {scheme}:// are not supported "
                          f"by this installation (supported: {', '.join(sorted(kinds()))})")
    if config.verify_before_delete and "md5" not in config.open_transport().capabilities.hashes:
        raise ConfigError(f"--verify-before-delete: {config.destination_spec().url()} "
                          "computes no md5 of its copies")
    if scheme == "ssh":
        if shutil.which("ssh") is None:
            raise ConfigError("ssh is not installed (no 'ssh' on PATH) but the destination "
                              "is reached with ssh")
        if config.ssh_key:
            _check_key(config.ssh_key)
        for flag, path in (("--ssh-key", config.ssh_key),
                           ("--ssh-known-hosts", config.ssh_known_hosts)):
            if path and "${" in path:
                raise ConfigError(f"{flag}: ssh cannot take a path containing '${{'")
        if config.ssh_known_hosts and not os.path.isfile(config.ssh_known_hosts):
            raise ConfigError(f"--ssh-known-hosts {config.ssh_known_hosts!r} does not exist")
    root = config.suprsync_file_root
    try:
        os.makedirs(root, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create --suprsync-file-root {root!r}: {exc.strerror}") from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise ConfigError(f"--suprsync-file-root {root!r} is not writable")
    if "://" not in config.db_path:
        folder = os.path.dirname(os.path.abspath(config.db_path))
        if os.path.exists(config.db_path) and not os.access(config.db_path, os.R_OK | os.W_OK):
            raise ConfigError(f"catalog {config.db_path!r} is not readable and writable")
        if not os.path.exists(config.db_path) and os.path.isdir(folder) \
                and not os.access(folder, os.W_OK):
            raise ConfigError(f"cannot create catalog {config.db_path!r}: "
                              f"{folder!r} is not writable")


def _check_rsync_values(config: AgentConfig) -> None:
    """Let rsync itself judge --bwlimit and --chmod (it refuses bad ones at once)."""
    argv = ["rsync"]
    if config.bwlimit:
        argv.append(f"--bwlimit={config.bwlimit}")
    if config.chmod:
        argv.append(f"--chmod={config.chmod}")
    if len(argv) == 1:
        return
    result = subprocess.run([*argv, "--version"], capture_output=True, text=True, timeout=30,
                            stdin=subprocess.DEVNULL, check=False)
    if result.returncode != 0:
        first = (result.stderr.strip().splitlines() or ["rejected"])[0]
        raise ConfigError(f"rsync refuses the options: {first}")


def _check_key(path: str) -> None:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ConfigError(f"--ssh-key {path!r}: {exc.strerror}") from None
    if not os.access(path, os.R_OK):
        raise ConfigError(f"--ssh-key {path!r} is not readable by this user")
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"--ssh-key {path!r} has mode {stat.S_IMODE(st.st_mode):o}; ssh "
                          f"refuses keys readable by others: chmod 600 it")


def add_audit_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``suprsync audit`` (the catalog flag --db is added by the caller)."""
    parser.add_argument("archive_name")
    parser.add_argument("--destination", default=None, metavar="URL", help=DESTINATION_HELP)
    parser.add_argument("--destination-id", default=None, metavar="NAME",
                        help="audit this destination of the archive (one of several): its "
                             "copies are judged, at the URL the catalog records for it "
                             "unless --destination names another")
    parser.add_argument("--remote-basedir", default=None,
                        help="base directory of the archive on the destination (or give "
                             "--destination)")
    parser.add_argument("--ssh-host", default=None,
                        help="destination host ('<user>@<host>'); without it, a local dir")
    parser.add_argument("--ssh-key", default=None, help="private key for ssh")
    parser.add_argument("--ssh-port", type=at_least_one, default=None, help="ssh port of the host")
    parser.add_argument("--ssh-known-hosts", default=None,
                        help="known_hosts file to check the host key against")
    parser.add_argument("--ssh-option", action="append", default=[], metavar="KEY=VALUE",
                        help="extra ssh -o option; may be repeated")
    parser.add_argument("--remote-shell", choices=("yes", "no"), default="yes",
                        help="no: the ssh key may run nothing but rsync (a key forced to rrsync); "
                             "verification, stat and listing then use the rsync protocol alone "
                             "(default: yes)")
    parser.add_argument("--rsync-password-file", default=None, metavar="FILE",
                        help="password of an rsync:// daemon module (default: $RSYNC_PASSWORD)")
    parser.add_argument("--cmd-timeout", type=float, default=None, metavar="SEC",
                        help="time limit of each remote command; the listing gets this plus "
                             "1 s per 2000 catalogued files (default: none)")
    parser.add_argument("--md5", action="store_true",
                        help="also compare the md5 of every synced file on the destination "
                             "(reads all their bytes)")
    parser.add_argument("--requeue", action="store_true",
                        help="queue files whose remote copy is missing or wrong to be copied "
                             "again (not those whose local copy is gone)")
    parser.add_argument("--json", action="store_true",
                        help="print the full result as JSON")
    parser.add_argument("--batch", type=at_least_one, default=DEFAULT_BATCH, metavar="N",
                        help=f"catalog rows per remote call (default: {DEFAULT_BATCH})")
    parser.add_argument("--list-limit", type=at_least_one, default=DEFAULT_LIST_LIMIT, metavar="N",
                        help="with --json, list at most N files per category; counts stay "
                             f"exact (default: {DEFAULT_LIST_LIMIT})")
