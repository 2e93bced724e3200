"""Where an archive goes, as one URL: parsed and checked, but not yet reached.

Accepted forms::

    /abs/path                                 a directory of this host
    file:///abs/path                          the same
    ssh://[user@]host[:port]/abs/path         a directory of a host reached with ssh
    rsync://[user@]host[:port]/module[/path]  a module of an rsync daemon

The older flags (``--remote-basedir`` with ``--ssh-host``) name the same
destinations; ``Destination.from_flags`` builds one from them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

#: URL schemes with a known form (whether a kind for them is installed is the registry's say).
SCHEMES = ("file", "ssh", "rsync")

_AUTHORITY = re.compile(r"^(?:(?P<user>[^@/\s]+)@)?(?P<host>\[[0-9A-Fa-f:.]+\]|[^:@/\[\]\s]+)"
                        r"(?::(?P<port>[^/]*))?$")


class DestinationError(ValueError):
    """A destination URL (or flag set) that names no usable place; the message says why."""


@dataclass(frozen=True)
class Destination:
    """One destination: its scheme, the host and login for remote ones, and the path.

    For ``rsync`` the path is the part after the module (may be empty).
    """

    scheme: str
    path: str
    host: str | None = None
    user: str | None = None
    port: int | None = None
    module: str | None = None

    @property
    def login(self) -> str | None:
        """``user@host`` (or the host alone), as ssh and rsync take it."""
        if self.host is None:
            return None
        return f"{self.user}@{self.host}" if self.user else self.host

    def url(self) -> str:
        """The destination as a URL (for logs; a relative ssh path from old flags stays so)."""
        if self.scheme == "file":
            return self.path
        where = self.login or ""
        if self.port is not None:
            where += f":{self.port}"
        if self.scheme == "rsync":
            tail = f"/{self.path}" if self.path else ""
            return f"rsync://{where}/{self.module}{tail}"
        sep = "" if self.path.startswith("/") else "/~/"
        return f"{self.scheme}://{where}{sep}{self.path}"

    @classmethod
    def from_flags(cls, remote_basedir: str, ssh_host: str | None = None) -> Destination:
        """The destination of the original's flags: a local dir, or one on ``ssh_host``.

        The path is taken as given (an ssh path may be relative to the login's home).
        """
        if not remote_basedir:
            raise DestinationError("no remote base dir given")
        if not ssh_host:
            return cls("file", remote_basedir)
        user, at, host = ssh_host.rpartition("@")
        return cls("ssh", remote_basedir, host=host, user=user if at else None)


def parse_destination(text: str) -> Destination:
    """The destination a URL (or plain absolute path) names; DestinationError if none."""
    if not text or not text.strip():
        raise DestinationError("the destination is empty")
    if text.startswith("/"):
        return Destination("file", _clean_path(text, text))
    scheme, sep, rest = text.partition("://")
    if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme):
        raise DestinationError(f"destination {text!r} is neither an absolute path nor a URL "
                               f"({', '.join(s + '://' for s in SCHEMES)})")
    scheme = scheme.lower()
    if scheme not in SCHEMES:
        raise DestinationError(f"unknown destination scheme {scheme!r} in {text!r} "
                               f"(known: {', '.join(SCHEMES)})")
    authority, slash, path = rest.partition("/")
    path = slash + path
    if scheme == "file":
        if authority not in ("", "localhost"):
            raise DestinationError(f"file:// URL {text!r} names a host; use ssh://")
        if not path.startswith("/"):
            raise DestinationError(f"file:// URL {text!r} needs an absolute path "
                                   "(file:///abs/path)")
        return Destination("file", _clean_path(unquote(path), text))
    match = _AUTHORITY.match(authority)
    if not match:
        raise DestinationError(f"destination {text!r} has no valid [user@]host[:port]")
    host = match["host"]
    if host.startswith("-"):
        raise DestinationError(f"destination {text!r}: a host name cannot start with '-'")
    port = _port(match["port"], text)
    user = unquote(match["user"]) if match["user"] else None
    if user is not None and (user.startswith("-") or any(c.isspace() for c in user)):
        raise DestinationError(f"destination {text!r}: {user!r} is not a user name")
    path = unquote(path)
    if scheme == "ssh":
        if not path.startswith("/") or path == "/":
            raise DestinationError(f"ssh URL {text!r} needs an absolute path below / "
                                   "(ssh://host/abs/path)")
        return Destination("ssh", _clean_path(path, text), host=host, user=user, port=port)
    module, _, inner = path.lstrip("/").partition("/")
    if not module:
        raise DestinationError(f"rsync URL {text!r} names no module "
                               "(rsync://host/module[/path])")
    inner = inner.strip("/")
    if inner and any(part in ("..", ".") for part in inner.split("/")):
        raise DestinationError(f"rsync URL {text!r}: '.' and '..' are not allowed in the path")
    return Destination("rsync", inner, host=host, user=user, port=port, module=module)


def _port(text: str | None, url: str) -> int | None:
    if text is None or text == "":
        return None
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise DestinationError(f"destination {url!r}: port {text!r} is not between 1 and 65535")
    return int(text)


def _clean_path(path: str, url: str) -> str:
    if "\0" in path or "\n" in path:
        raise DestinationError(f"destination {url!r}: the path holds a NUL or newline")
    cleaned = re.sub("/+", "/", path)
    return cleaned.rstrip("/") or "/"
