"""Bench projects: compose-labelled busybox containers whose processes hold real memory.

Each service runs ``(SOURCE | head -c N; sleep) | tail -c N``: busybox ``tail -c N`` keeps the
last N bytes of its input in its own heap, so a process in the container holds N bytes of
anonymous memory that CRIU must dump. ``random`` reads /dev/urandom (incompressible);
``text`` reads ``seq`` output (decimal numbers, one per line: zstd shrinks it several-fold).
"""

from __future__ import annotations

import contextlib
import secrets
import time
from dataclasses import dataclass

from tasks.errors import PodmanNotFound
from tasks.libpod import Libpod

__all__ = ["CONTENTS", "Project", "create_project", "remove_project"]

MiB = 1 << 20
CONTENTS = {
    "random": "head -c {n} /dev/urandom",
    "text": "seq 1 999999999 | head -c {n}",
}


@dataclass(frozen=True)
class Project:
    """A bench project: its name and one container per service."""

    name: str
    services: dict[str, str]  # service -> container name
    mib_per_service: int
    content: str


def create_project(
    lp: Libpod, image: str, services: int, mib: int, content: str, timeout_s: float = 300
) -> Project:
    """Create and start ``services`` containers each holding ``mib`` MiB; wait until held."""
    project = f"b{secrets.token_hex(4)}"
    names = {f"s{i}": f"{project}-s{i}-1" for i in range(services)}
    n = mib * MiB
    hold = f"({CONTENTS[content].format(n=n)}; exec sleep 1000000) | tail -c {n} > /dev/null"
    made = Project(project, names, mib, content)
    try:
        for svc, name in names.items():
            labels = {"com.docker.compose.project": project, "com.docker.compose.service": svc}
            lp.create_container(
                {"name": name, "image": image, "command": ["sh", "-c", hold], "labels": labels}
            )
            lp.start(name)
        for name in names.values():
            _wait_held(lp, name, n, timeout_s)
    except BaseException:
        remove_project(lp, made)
        raise
    return made


def _wait_held(lp: Libpod, name: str, n: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        out = lp.exec(name, ["sh", "-c", "grep -h VmRSS /proc/[0-9]*/status"]).stdout.decode()
        rss = max((int(w) * 1024 for w in out.split() if w.isdigit()), default=0)
        if rss >= n:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} holds {rss} bytes after {timeout_s}s, wanted {n}")
        time.sleep(0.5)


def remove_project(lp: Libpod, project: Project) -> None:
    """Remove the project's containers from the node ``lp`` talks to (any state)."""
    for name in project.services.values():
        with contextlib.suppress(PodmanNotFound):
            lp.remove(name, force=True, volumes=True)
