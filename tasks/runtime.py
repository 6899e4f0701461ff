"""The per-process resources a task uses: settings, this node's libpod client, the store.

Built lazily on first use, in the process that uses them (after Celery's prefork), so that
importing podchord connects to nothing and forked children never share a socket.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from .errors import InvalidInput
from .libpod import Libpod
from .settings import Settings
from .store import Store, open_store

__all__ = ["Runtime", "configure", "runtime"]


@dataclass
class Runtime:
    """Settings plus the clients they describe, made on first use."""

    settings: Settings
    _libpod: Libpod | None = field(default=None, repr=False)
    _store: Store | None = field(default=None, repr=False)

    @property
    def node(self) -> str:
        if self.settings.node is None:
            raise InvalidInput("this process has no node: set PODCHORD_NODE (workers only)")
        return self.settings.node

    def libpod(self) -> Libpod:
        """This node's libpod client."""
        if self._libpod is None:
            if self.settings.podman_socket is None:
                raise InvalidInput("PODCHORD_PODMAN_SOCKET is not set for this worker")
            self._libpod = Libpod.from_socket(self.settings.podman_socket)
        return self._libpod

    def store(self) -> Store:
        """The archive store."""
        if self._store is None:
            self._store = open_store(self.settings.store_url)
        return self._store


_lock = threading.Lock()
_current: Runtime | None = None


def configure(settings: Settings | None) -> Runtime | None:
    """Replace this process's runtime (None: rebuild from the environment on next use)."""
    global _current
    with _lock:
        _current = None if settings is None else Runtime(settings)
        return _current


def runtime() -> Runtime:
    """Return this process's runtime, reading the environment the first time."""
    global _current
    with _lock:
        if _current is None:
            _current = Runtime(Settings.from_env())
        return _current
