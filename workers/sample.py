"""A small multi-service sample project, created through libpod (used by the demo and tests).

Three compose-labelled services whose state lives in memory, so a migration that loses
memory shows: ``db`` (a counter plus a named volume holding a seed file), ``web`` (busybox
httpd plus a counter) and ``client`` (fetches from ``web`` by name in a loop, counting
successes; labelled ``dev.containers.id`` as the project's primary service).
"""

from __future__ import annotations

import contextlib
import secrets
import time
from dataclasses import dataclass
from typing import Any

from tasks.errors import PodmanNotFound
from tasks.libpod import Libpod
from tasks.libpod_types import NetworkDef
from tasks.names import check_project

__all__ = ["SampleProject", "create_sample", "read_counter", "remove_sample"]

_COUNTER = "i=0; while :; do i=$((i+1)); echo $i > /tmp/n; sleep 0.1; done"
_COMMANDS = {
    "db": "[ -f /data/seed ] || echo seed-$$-$(date +%s) > /data/seed; " + _COUNTER,
    "web": "mkdir -p /www && echo hello-from-web > /www/index.html && httpd -p 80 -h /www; "
    + _COUNTER,
    "client": "ok=0; while :; do if wget -q -O /tmp/body http://web/; then ok=$((ok+1)); "
    "echo $ok > /tmp/ok; fi; sleep 0.2; done",
}


@dataclass(frozen=True)
class SampleProject:
    """Names of what :func:`create_sample` made."""

    project: str
    network: str
    volume: str
    containers: dict[str, str]  # service -> container name


def create_sample(lp: Libpod, project: str, image: str) -> SampleProject:
    """Create and start the sample project on the node ``lp`` talks to."""
    project = check_project(project)
    network, volume = f"{project}_default", f"{project}_data"
    lp.create_network(NetworkDef(name=network, dns_enabled=True))
    containers = {svc: f"{project}-{svc}-1" for svc in _COMMANDS}
    for svc, cmd in _COMMANDS.items():
        labels = {"com.docker.compose.project": project, "com.docker.compose.service": svc}
        if svc == "client":
            labels["dev.containers.id"] = secrets.token_hex(6)
        spec: dict[str, Any] = {
            "name": containers[svc],
            "image": image,
            "command": ["sh", "-c", cmd],
            "labels": labels,
            "networks": {network: {"aliases": [svc]}},
        }
        if svc == "db":
            spec["volumes"] = [{"Name": volume, "Dest": "/data"}]
        lp.create_container(spec)
        lp.start(containers[svc])
        lp.wait_state(containers[svc], ("running",), timeout_s=30)
    return SampleProject(project, network, volume, containers)


def read_counter(lp: Libpod, container: str, path: str = "/tmp/n") -> int:
    """Read a counter file a sample service keeps (0 when not written yet).

    The writer's ``echo $i > file`` truncates before it writes, so a read can land in
    between and see an empty file (more often on a loaded machine): read again a few times.
    """
    for _ in range(10):
        text = lp.exec(container, ["cat", path]).stdout.decode().strip()
        if text.isdigit():
            return int(text)
        time.sleep(0.05)
    return 0


def remove_sample(lp: Libpod, sample: SampleProject, *, volumes: bool = True) -> None:
    """Remove the sample's containers, network and (optionally) volume from one node."""
    for name in sample.containers.values():
        with contextlib.suppress(PodmanNotFound):
            lp.remove(name, force=True, volumes=False)
    with contextlib.suppress(PodmanNotFound):
        lp.remove_network(sample.network, force=True)
    if volumes:
        with contextlib.suppress(PodmanNotFound):
            lp.remove_volume(sample.volume, force=True)


def container_exists(lp: Libpod, name: str) -> bool:
    """Whether the node ``lp`` talks to has a container ``name`` (in any state)."""
    try:
        lp.container_state(name)
    except PodmanNotFound:
        return False
    return True
