"""The kinds of destination, by URL scheme; the one place that turns a destination into a transport.

Each kind is a module that registers a factory for its scheme::

    @register("ssh")
    def open_ssh(destination: Destination, options: TransferOptions, access: Access) -> Transport:
        ...

and is named once in ``KIND_MODULES``. Nothing else imports a kind: the agent,
the steps, audit and the command line call ``open_destination``.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from dataclasses import dataclass

from .base import Access, TransferOptions, Transport
from .destination import Destination, DestinationError, parse_destination

#: The modules (of this package) that define a kind of destination, imported on first use.
KIND_MODULES = ("local", "ssh", "rsyncd")

Factory = Callable[[Destination, TransferOptions, Access], Transport]


@dataclass(frozen=True)
class Kind:
    """One registered kind: how to open it, and how to clean up what a killed run left."""

    scheme: str
    factory: Factory
    #: Removes leftovers of dead runs (staging trees, connection sockets); returns a count.
    remove_leftovers: Callable[[], int] | None = None


_kinds: dict[str, Kind] = {}
_loaded = False
_lock = threading.Lock()


def register(scheme: str, remove_leftovers: Callable[[], int] | None = None
             ) -> Callable[[Factory], Factory]:
    """Decorator: ``factory`` opens destinations of ``scheme``."""
    def add(factory: Factory) -> Factory:
        _kinds[scheme] = Kind(scheme, factory, remove_leftovers)
        return factory

    return add


def kinds() -> dict[str, Kind]:
    """Every registered kind, by scheme (the kind modules are imported first)."""
    global _loaded
    with _lock:
        if not _loaded:
            for name in KIND_MODULES:
                importlib.import_module(f"{__package__}.{name}")
            _loaded = True
    return dict(_kinds)


def open_destination(destination: str | Destination, options: TransferOptions | None = None,
                     access: Access | None = None) -> Transport:
    """A transport to the destination (a URL, a plain path, or a parsed Destination).

    Nothing is reached yet. Raises DestinationError for a URL that names no
    usable place or whose kind is not installed.
    """
    if isinstance(destination, str):
        destination = parse_destination(destination)
    access = access or Access()
    if destination.port is not None and access.port is not None \
            and destination.port != access.port:
        raise DestinationError(f"two ports for {destination.url()}: {destination.port} in the "
                               f"URL and {access.port} from the options")
    kind = kinds().get(destination.scheme)
    if kind is None:
        raise DestinationError(f"destinations of kind {destination.scheme}:// are not "
                               f"supported by this installation (supported: "
                               f"{', '.join(sorted(kinds()))})")
    return kind.factory(destination, options or TransferOptions(), access)


def remove_leftovers() -> int:
    """Let every kind remove what runs that were killed left behind; the count removed."""
    done: set[Callable[[], int]] = set()
    removed = 0
    for kind in kinds().values():
        if kind.remove_leftovers is not None and kind.remove_leftovers not in done:
            done.add(kind.remove_leftovers)
            removed += kind.remove_leftovers()
    return removed
