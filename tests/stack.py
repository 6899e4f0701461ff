"""Real Celery workers for tests: one `podchord worker` process per test-bed node."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import boto3

from workers.app import create_app
from tasks.settings import Settings


@dataclass
class Worker:
    node: str
    proc: subprocess.Popen[bytes]
    log: Path
    spool: Path

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20) -> None:
        if self.proc.poll() is not None:
            return
        # The worker was started in its own session: its prefork children share the group.
        os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def make_bucket(endpoint: str, name: str) -> None:
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=name)


def worker_env(testbed, store_url: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(testbed.env)
    env["PODCHORD_STORE_URL"] = store_url
    env.update(extra or {})
    return env


def start_worker(testbed, node: str, store_url: str, tmp: Path, concurrency: int = 4,
                 extra: dict[str, str] | None = None) -> Worker:
    spool = tmp / f"spool-{node}"
    log = tmp / f"worker-{node}.log"
    env = worker_env(testbed, store_url, {"PODCHORD_SPOOL_DIR": str(spool), **(extra or {})})
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "workers.cli", "worker", "--node", node,
             "--podman-socket", testbed.socket(node), "--concurrency", str(concurrency)],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    return Worker(node, proc, log, spool)


def client_app(testbed, store_url: str):
    settings = Settings(broker_url=testbed.broker_url, result_backend=testbed.result_backend,
                        store_url=store_url)
    return create_app(settings)


def wait_ready(app, workers: list[Worker], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    want = {w.node for w in workers}
    while time.monotonic() < deadline:
        for w in workers:
            if w.proc.poll() is not None:
                raise RuntimeError(f"worker {w.node} exited:\n{w.log.read_text()[-3000:]}")
        replies = app.control.ping(timeout=1.0) or []
        seen = {name.split("@")[0] for r in replies for name in r}
        if want <= seen:
            return
        time.sleep(0.5)
    raise RuntimeError(f"workers {want} not ready; logs:\n" +
                       "\n".join(w.log.read_text()[-2000:] for w in workers))
