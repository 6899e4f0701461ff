"""Session fixtures exposing the real test bed (scripts/testbed).

The test bed is used when it is already up (scripts/test brings it up); otherwise this session
brings it up and takes it down again at the end. With CI=true a test bed that cannot start is a
test failure, never a skip: a CI that skips the real stack proves nothing.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tasks.libpod import Libpod

REPO = Path(__file__).resolve().parent.parent
TESTBED = REPO / "scripts" / "testbed"


@dataclass(frozen=True)
class Testbed:
    """Endpoints of the running test bed."""

    env: dict[str, str]
    nodes: dict[str, str]  # node name -> libpod socket path
    image: str
    image_tar: str  # the busybox rootfs tar, to import fresh, uniquely named images
    broker_url: str
    result_backend: str
    s3_endpoint: str
    redis_pid: int
    s3_pid: int

    def socket(self, node: str) -> str:
        return self.nodes[node]


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _parse_env(text: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in text.splitlines():
        if not line.startswith("export "):
            continue
        key, _, value = line[len("export ") :].partition("=")
        env[key] = value.strip('"')
    return env


def _unavailable(reason: str) -> None:
    if _in_ci():
        pytest.fail(f"test bed unavailable in CI: {reason}", pytrace=False)
    pytest.skip(f"test bed unavailable: {reason}")


@pytest.fixture(scope="session")
def testbed() -> Iterator[Testbed]:
    started_here = False
    status = subprocess.run([TESTBED, "status"], capture_output=True, text=True)
    if status.returncode != 0:
        if os.geteuid() != 0:
            _unavailable("needs root")
        up = subprocess.run([TESTBED, "up"], capture_output=True, text=True)
        if up.returncode != 0:
            _unavailable(f"scripts/testbed up failed:\n{up.stderr[-3000:]}")
        started_here = True
    out = subprocess.run([TESTBED, "env"], capture_output=True, text=True, check=True).stdout
    env = _parse_env(out)
    nodes = {
        name: env[f"PODCHORD_SOCKET_{name.upper().replace('-', '_')}"]
        for name in env["PODCHORD_TESTBED_NODES"].split()
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield Testbed(
            env=env,
            nodes=nodes,
            image=env["PODCHORD_TESTBED_IMAGE"],
            image_tar=env["PODCHORD_TESTBED_IMAGE_TAR"],
            broker_url=env["PODCHORD_BROKER_URL"],
            result_backend=env["PODCHORD_RESULT_BACKEND"],
            s3_endpoint=env["AWS_ENDPOINT_URL"],
            redis_pid=int(env["PODCHORD_REDIS_PID"]),
            s3_pid=int(env["PODCHORD_S3_PID"]),
        )
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if started_here:
            subprocess.run([TESTBED, "down"], capture_output=True, text=True)


@pytest.fixture
def node_a(testbed) -> Iterator[Libpod]:
    """A libpod client on node a."""
    with Libpod.from_socket(testbed.socket("a")) as lp:
        yield lp


@pytest.fixture
def node_b(testbed) -> Iterator[Libpod]:
    """A libpod client on node b."""
    with Libpod.from_socket(testbed.socket("b")) as lp:
        yield lp


@pytest.fixture
def sample(node_a, node_b, testbed) -> Iterator[object]:
    """The sample project (db, web, client) running on node a, removed from a and b after."""
    import secrets

    from workers.sample import create_sample, remove_sample

    made = create_sample(node_a, f"p{secrets.token_hex(4)}", testbed.image)
    yield made
    remove_sample(node_a, made)
    remove_sample(node_b, made)


@dataclass
class Stack:
    """Real `podchord worker` processes for every test-bed node, plus a client app."""

    app: object
    store_url: str
    bucket: str
    workers: dict[str, object]


@pytest.fixture(scope="session")
def stack(testbed, tmp_path_factory) -> Iterator[Stack]:
    import secrets

    from tests.stack import claim_db_pair, client_app, make_bucket, release_db_pair, start_worker
    from workers.launch import wait_ready

    bucket = f"podchord-test-{secrets.token_hex(4)}"
    make_bucket(testbed.s3_endpoint, bucket)
    store_url = f"s3://{bucket}/pc"
    tmp = tmp_path_factory.mktemp("stack")
    # A Redis database of its own per test session, so that two sessions' workers never
    # take each other's tasks.
    base = testbed.broker_url.rsplit("/", 1)[0]
    db = claim_db_pair(base)
    urls = {"PODCHORD_BROKER_URL": f"{base}/{db}", "PODCHORD_RESULT_BACKEND": f"{base}/{db + 1}"}
    workers: dict[str, object] = {}
    try:
        for n in testbed.nodes:
            workers[n] = start_worker(testbed, n, store_url, tmp, extra=urls)
        app = client_app(store_url, urls["PODCHORD_BROKER_URL"], urls["PODCHORD_RESULT_BACKEND"])
        wait_ready(app, list(workers.values()))
        yield Stack(app=app, store_url=store_url, bucket=bucket, workers=workers)
    finally:
        for w in workers.values():
            w.stop()  # type: ignore[attr-defined]
        release_db_pair(base, db)
