"""Settings of a podchord process, read once from the environment.

Nothing here connects to anything: the libpod client and the store are built lazily, in the
worker process that needs them (see :mod:`tasks.runtime`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidInput
from .names import check_node

__all__ = ["Settings"]

_DEFAULT_SPOOL = "/var/lib/podchord/spool"


@dataclass(frozen=True)
class Settings:
    """Everything a podchord worker or client needs to know.

    Attributes:
        broker_url: Celery broker (Redis) URL.
        result_backend: Celery result backend (Redis) URL.
        store_url: where archives go: ``s3://bucket/prefix`` or ``file:///path``.
        node: this worker's node name (None for clients and beat).
        podman_socket: this worker's libpod Unix socket (None for clients and beat).
        spool_dir: folder for 0600 spool files (eviction tees, restore downloads).
        socket_root: a worker refuses a Podman socket outside this folder (None: any).
        allowed_store_prefixes: a worker refuses a store URL not starting with one of these
            (empty: any).
        task_timeout_s: the longest a single task may run; sizes the broker's visibility
            timeout.
    """

    broker_url: str
    result_backend: str
    store_url: str
    node: str | None = None
    podman_socket: str | None = None
    spool_dir: Path = Path(_DEFAULT_SPOOL)
    socket_root: str | None = None
    allowed_store_prefixes: tuple[str, ...] = ()
    task_timeout_s: int = 3600

    def __post_init__(self) -> None:
        if self.node is not None:
            check_node(self.node)
        for scheme, url in (("redis", self.broker_url), ("redis", self.result_backend)):
            if not url.startswith((f"{scheme}://", f"{scheme}s://")):
                raise InvalidInput(f"expected a {scheme}:// URL, got {url!r}")
        if not self.store_url.startswith(("s3://", "file://")):
            raise InvalidInput(
                f"PODCHORD_STORE_URL must be s3:// or file://, got {self.store_url!r}"
            )
        allowed = self.allowed_store_prefixes
        if allowed and not any(_under(self.store_url, p) for p in allowed):
            raise InvalidInput(
                f"store URL {self.store_url!r} is outside PODCHORD_ALLOWED_STORES "
                f"{list(self.allowed_store_prefixes)}"
            )
        if self.podman_socket is not None and self.socket_root is not None:
            real = os.path.realpath(self.podman_socket)
            root = os.path.realpath(self.socket_root).rstrip("/") + "/"
            if not real.startswith(root):
                raise InvalidInput(
                    f"Podman socket {self.podman_socket!r} is outside PODCHORD_SOCKET_ROOT "
                    f"{self.socket_root!r}"
                )
        if self.task_timeout_s <= 0:
            raise InvalidInput("PODCHORD_TASK_TIMEOUT_S must be positive")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``PODCHORD_*`` variables.

        Raises:
            InvalidInput: naming the variable that is missing or wrong.
        """
        env = os.environ if env is None else env

        def need(name: str) -> str:
            value = env.get(name, "").strip()
            if not value:
                raise InvalidInput(f"{name} is not set")
            return value

        timeout = env.get("PODCHORD_TASK_TIMEOUT_S", "3600")
        if not timeout.isdigit():
            raise InvalidInput(f"PODCHORD_TASK_TIMEOUT_S must be whole seconds, got {timeout!r}")
        allowed = tuple(p for p in env.get("PODCHORD_ALLOWED_STORES", "").split(",") if p)
        return cls(
            broker_url=need("PODCHORD_BROKER_URL"),
            result_backend=env.get("PODCHORD_RESULT_BACKEND") or need("PODCHORD_BROKER_URL"),
            store_url=need("PODCHORD_STORE_URL"),
            node=env.get("PODCHORD_NODE") or None,
            podman_socket=env.get("PODCHORD_PODMAN_SOCKET") or None,
            spool_dir=Path(env.get("PODCHORD_SPOOL_DIR") or _DEFAULT_SPOOL),
            socket_root=env.get("PODCHORD_SOCKET_ROOT") or None,
            allowed_store_prefixes=allowed,
            task_timeout_s=int(timeout),
        )


def _under(url: str, allowed: str) -> bool:
    """``url`` is ``allowed`` or below it, on a path boundary.

    A plain prefix test would let ``s3://archives`` admit ``s3://archives-evil/...``.
    """
    base = allowed.rstrip("/")
    return url.rstrip("/") == base or url.startswith(base + "/")
