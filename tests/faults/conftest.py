"""Fixtures of the faults suite: dedicated workers with a fault in their path, own Redis.

The shared ``stack`` (tests/conftest.py) serves the cases that need no special worker. A
case that must disturb a worker's Redis, S3, Podman socket or spool folder starts its own
`podchord worker` processes here, pointed at a proxy or at a Redis server of its own, so the
test bed's shared services are never disturbed.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from tasks.libpod import Libpod
from tests.conftest import _unavailable
from tests.stack import claim_db_pair, client_app, make_bucket, release_db_pair
from workers.launch import WorkerProcess, start_worker, wait_ready
from workers.sample import SampleProject

RESULT_TIMEOUT_S = 240




def states(lp: Libpod, sample: SampleProject) -> dict[str, str]:
    out = {}
    for svc, name in sample.containers.items():
        try:
            out[svc] = lp.container_state(name)
        except Exception:
            out[svc] = "missing"
    return out


def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


@dataclass
class MiniStack:
    """Workers of its own (with a fault in their path) and a client app on their Redis."""

    app: Any
    store_url: str
    bucket: str
    broker_url: str
    result_backend: str
    workers: dict[str, WorkerProcess] = field(default_factory=dict)


@pytest.fixture
def mini_stack(testbed, tmp_path) -> Iterator[Callable[..., MiniStack]]:
    """Factory: ``mini_stack(nodes={"a": socket}, env={...}, redis_base=None, bucket=None)``.

    Without ``redis_base`` it claims a database pair on the test bed's Redis; without
    ``bucket`` it makes a fresh one. Everything it started is stopped at teardown.
    """
    started: list[WorkerProcess] = []
    claims: list[tuple[str, int]] = []

    def make(
        nodes: dict[str, str],
        env: dict[str, str] | None = None,
        redis_base: str | None = None,
        bucket: str | None = None,
        prepare: Callable[[Path], None] | None = None,
        wait: bool = True,
    ) -> MiniStack:
        if redis_base is None:
            redis_base = testbed.broker_url.rsplit("/", 1)[0]
            db = claim_db_pair(redis_base)
            claims.append((redis_base, db))
            broker, backend = f"{redis_base}/{db}", f"{redis_base}/{db + 1}"
        else:
            broker, backend = f"{redis_base}/0", f"{redis_base}/1"
        if bucket is None:
            bucket = f"podchord-fault-{secrets.token_hex(4)}"
            make_bucket(testbed.s3_endpoint, bucket)
        store_url = f"s3://{bucket}/pc"
        full_env = {
            **testbed.env,
            "PODCHORD_STORE_URL": store_url,
            "PODCHORD_BROKER_URL": broker,
            "PODCHORD_RESULT_BACKEND": backend,
            **(env or {}),
        }
        workdir = tmp_path / f"mini-{secrets.token_hex(3)}"
        workdir.mkdir()
        if prepare is not None:
            prepare(workdir)
        ms = MiniStack(client_app(store_url, broker, backend), store_url, bucket, broker, backend)
        for node, sock in nodes.items():
            w = start_worker(node, sock, full_env, workdir, concurrency=3)
            started.append(w)
            ms.workers[node] = w
        if wait:
            wait_ready(ms.app, list(ms.workers.values()), timeout_s=90)
        return ms

    yield make
    for w in started:
        w.stop()
    for base, db in claims:
        release_db_pair(base, db)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class OwnRedis:
    """A redis-server of this test alone (never the test bed's), restartable by pid."""

    port: int
    workdir: Path
    appendonly: bool = True
    password: str | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}"

    def start(self) -> None:
        args = [
            shutil.which("redis-server") or "redis-server",
            "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
            "--save", "", "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "always", "--databases", "4",
        ] + (["--requirepass", self.password] if self.password else [])
        log = (self.workdir / "redis.log").open("ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(redis.RedisError):
                if redis.Redis(port=self.port, password=self.password, socket_timeout=1).ping():
                    return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                _unavailable(f"own redis-server did not start: {self.workdir / 'redis.log'}")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: what a crash looks like (appendfsync always keeps every acked write)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def own_redis(tmp_path) -> Iterator[OwnRedis]:
    if shutil.which("redis-server") is None:
        _unavailable("redis-server is not installed")
    workdir = tmp_path / "redis"
    workdir.mkdir()
    r = OwnRedis(_free_port(), workdir)
    r.start()
    yield r
    r.kill()


