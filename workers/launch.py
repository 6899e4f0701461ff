"""Start and stop `podchord worker` processes (used by the demo and the test suite)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["WorkerProcess", "start_worker", "wait_ready"]


@dataclass
class WorkerProcess:
    """A worker started by :func:`start_worker`; stop it with :meth:`stop`."""

    node: str
    proc: subprocess.Popen[bytes]
    log: Path
    spool: Path

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20) -> None:
        """Stop the worker and its pool children (its own process group), by its pid."""
        if self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def start_worker(
    node: str,
    podman_socket: str,
    env: Mapping[str, str],
    workdir: Path,
    *,
    concurrency: int = 4,
) -> WorkerProcess:
    """Start ``podchord worker`` for ``node`` in its own session; logs go to ``workdir``."""
    spool = workdir / f"spool-{node}"
    log = workdir / f"worker-{node}.log"
    full_env = {**os.environ, **env, "PODCHORD_SPOOL_DIR": str(spool)}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "workers.cli", "worker", "--node", node,
             "--podman-socket", podman_socket, "--concurrency", str(concurrency)],
            env=full_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    return WorkerProcess(node, proc, log, spool)


def wait_ready(app: Any, workers: list[WorkerProcess], timeout_s: float = 60) -> None:
    """Wait until every worker answers a ping.

    Raises:
        RuntimeError: a worker exited or did not answer in time (with its log's tail).
    """
    deadline = time.monotonic() + timeout_s
    want = {w.node for w in workers}
    while time.monotonic() < deadline:
        for w in workers:
            if w.proc.poll() is not None:
                raise RuntimeError(f"worker {w.node} exited:\n{w.log.read_text()[-3000:]}")
        replies = app.control.ping(timeout=1.0) or []
        if want <= {name.split("@")[0] for r in replies for name in r}:
            return
        time.sleep(0.5)
    tails = "\n".join(w.log.read_text()[-2000:] for w in workers)
    raise RuntimeError(f"workers {sorted(want)} not ready:\n{tails}")
