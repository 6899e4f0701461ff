"""S3 answering errors or going away in the middle of a multipart upload.

A worker of node a reaches the test bed's moto server only through a fault-injecting HTTP
proxy (tests/faults/proxies.py); the tests read the real bucket directly. One service of the
project writes 20 MB into its root file system, so its archive goes multipart (8 MiB parts).
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tasks import api, lock
from tasks.errors import CheckpointAborted, PodmanNotFound
from tasks.libpod import Libpod
from tasks.store import open_store
from tests.faults.conftest import RESULT_TIMEOUT_S, wait_until
from tests.faults.proxies import S3FaultProxy
from tests.stack import objects_under, open_uploads, spool_files

pytestmark = pytest.mark.podman

BIG_MB = 20


@dataclass(frozen=True)
class BigProject:
    project: str
    containers: dict[str, str]


@pytest.fixture
def big_project(node_a, testbed) -> Iterator[BigProject]:
    project = f"s{secrets.token_hex(4)}"
    commands = {
        "big": f"dd if=/dev/urandom of=/big bs=1048576 count={BIG_MB} 2>/dev/null; "
        "touch /ready; i=0; while :; do i=$((i+1)); echo $i > /tmp/n; sleep 0.1; done",
        "small": "i=0; while :; do i=$((i+1)); echo $i > /tmp/n; sleep 0.1; done",
    }
    containers = {svc: f"{project}-{svc}-1" for svc in commands}
    for svc, cmd in commands.items():
        node_a.create_container({
            "name": containers[svc], "image": testbed.image, "command": ["sh", "-c", cmd],
            "labels": {"com.docker.compose.project": project,
                       "com.docker.compose.service": svc},
        })
        node_a.start(containers[svc])
    wait_until(
        lambda: node_a.exec(containers["big"], ["cat", "/ready"]).exit_code == 0, 60, "20 MB"
    )
    yield BigProject(project, containers)
    for lp_sock in (testbed.socket("a"), testbed.socket("b")):
        with Libpod.from_socket(lp_sock) as lp:
            for name in containers.values():
                with contextlib.suppress(PodmanNotFound):
                    lp.remove(name, force=True)


@pytest.fixture
def proxied(testbed, mini_stack):
    """A node-a worker whose S3 requests all pass through a fault proxy."""
    with S3FaultProxy(testbed.s3_endpoint) as proxy:
        ms = mini_stack({"a": testbed.socket("a")}, env={"AWS_ENDPOINT_URL": proxy.url})
        yield ms, proxy


def running(lp: Libpod, project: BigProject) -> dict[str, str]:
    return {svc: lp.container_state(name) for svc, name in project.containers.items()}


def is_archive_part(query, path: str, part: int | None = None) -> bool:
    if "/services/big.tar" not in path or "partNumber" not in query:
        return False
    return part is None or query["partNumber"] == [str(part)]


def test_transient_errors_mid_multipart_are_retried_and_the_checkpoint_commits(
    testbed, proxied, big_project, node_a
):
    ms, proxy = proxied
    failures = {"left": 3}

    def rule(method, path, query):
        if method == "PUT" and is_archive_part(query, path, part=2) and failures["left"]:
            failures["left"] -= 1
            return 503
        return None

    proxy.rule = rule
    summary = api.checkpoint(ms.app, big_project.project, "a", {"leave_running": True}).get(
        timeout=RESULT_TIMEOUT_S
    )
    assert failures["left"] == 0, "the fault never fired"
    assert len(proxy.ops("UploadPart", "status 503")) == 3
    assert any(
        s.query["partNumber"] == ["2"] and s.action == "forward"
        for s in proxy.ops("UploadPart") if "/services/big.tar" in s.path
    ), "part 2 was never retried"
    store = open_store(ms.store_url)
    manifest = store.read_manifest(big_project.project, summary["checkpoint_id"])
    assert b"services/big.tar" in manifest
    big = next(s for s in __import__("json").loads(manifest)["services"] if s["name"] == "big")
    assert big["archive"]["size_bytes"] > BIG_MB * 1_000_000
    assert open_uploads(testbed, ms.bucket, "pc/") == []
    assert set(running(node_a, big_project).values()) == {"running"}


def arm_after_first_part(proxy: S3FaultProxy, fault) -> dict[str, bool]:
    """Let part 1 of big.tar through, then apply ``fault`` to what follows."""
    state = {"armed": False}

    def rule(method, path, query):
        if method == "PUT" and is_archive_part(query, path, part=1) and not state["armed"]:
            state["armed"] = True
            return None
        return fault(method, path, query) if state["armed"] else None

    proxy.rule = rule
    return state


def test_s3_errors_mid_multipart_are_retried_then_fail_clean_and_roll_back(
    testbed, proxied, big_project, node_a
):
    ms, proxy = proxied
    state = arm_after_first_part(
        proxy, lambda m, p, q: 500 if m == "PUT" and is_archive_part(q, p) else None
    )
    result = api.checkpoint(
        ms.app, big_project.project, "a", {"leave_running": False, "deadline_s": 60}
    )
    with pytest.raises(CheckpointAborted) as info:
        result.get(timeout=RESULT_TIMEOUT_S)
    assert state["armed"], "the fault never fired"
    # botocore's standard retry mode (5 attempts, backoff), then the retry from the spool.
    assert len(proxy.ops("UploadPart", "status 500")) >= 5, proxy.ops("UploadPart")
    assert len(proxy.ops("CreateMultipartUpload", "forward")) >= 2, "no retry from the spool"
    text = str(info.value)
    assert "running again on a" in text, text
    assert set(running(node_a, big_project).values()) == {"running"}, text
    prefix = f"pc/projects/{big_project.project}/"
    assert objects_under(testbed, ms.bucket, prefix) == []
    assert open_uploads(testbed, ms.bucket, prefix) == []
    assert spool_files(ms.workers["a"]) == []
    assert lock.holder(ms.app.backend.client, big_project.project) is None


def test_s3_outage_mid_multipart_still_rolls_back_and_prune_cleans_up_after(
    testbed, proxied, big_project, node_a
):
    # S3 goes away entirely after part 1 (every connection dropped): the objects and the
    # open upload cannot be removed now, but the workload must come back on a regardless.
    ms, proxy = proxied
    state = arm_after_first_part(proxy, lambda m, p, q: "drop")
    result = api.checkpoint(
        ms.app, big_project.project, "a", {"leave_running": False, "deadline_s": 60}
    )
    with pytest.raises(CheckpointAborted) as info:
        result.get(timeout=RESULT_TIMEOUT_S)
    assert state["armed"], "the fault never fired"
    text = str(info.value)
    assert "running again on a" in text, text
    assert "left for prune" in text, text
    assert set(running(node_a, big_project).values()) == {"running"}, text
    assert spool_files(ms.workers["a"]) == []
    assert lock.holder(ms.app.backend.client, big_project.project) is None
    prefix = f"pc/projects/{big_project.project}/"
    store = open_store(ms.store_url)
    assert [e for e in store.list_checkpoints(big_project.project) if e.committed] == []
    # S3 is back: retention removes the uncommitted leftovers, open upload included.
    proxy.rule = lambda m, p, q: None
    report = ms.app.send_task(
        "podchord.prune", args=(big_project.project, 1, 0.0), queue="podchord"
    ).get(timeout=RESULT_TIMEOUT_S)
    assert report, report
    assert objects_under(testbed, ms.bucket, prefix) == []
    assert open_uploads(testbed, ms.bucket, prefix) == []
