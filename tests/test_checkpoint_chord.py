"""The checkpoint chord on the real stack: Redis, moto's S3 server, `celery worker`s, Podman."""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
from collections.abc import Iterator

import pytest

from tasks import api
from tasks.errors import CheckpointAborted, PodmanNotFound
from tasks.store import open_store
from tests.stack import objects_under, open_uploads, s3
from workers.sample import create_sample, read_counter, remove_sample

pytestmark = pytest.mark.podman




def test_backup_checkpoint_commits_a_verified_manifest(stack, testbed, sample, node_a):
    before = {
        svc: read_counter(node_a, c) for svc, c in sample.containers.items() if svc != "client"
    }
    result = api.checkpoint(stack.app, sample.project, "a", {"leave_running": True})
    summary = result.get(timeout=240)
    assert summary["project"] == sample.project
    assert summary["mode"] == "backup"
    assert sorted(summary["services"]) == ["client", "db", "web"]
    store = open_store(stack.store_url)
    manifest = json.loads(store.read_manifest(sample.project, summary["checkpoint_id"]))
    client = s3(testbed)
    for svc in manifest["services"]:
        arch = svc["archive"]
        body = client.get_object(Bucket=stack.bucket, Key=arch["key"])["Body"].read()
        assert hashlib.sha256(body).hexdigest() == arch["sha256"]
        assert len(body) == arch["size_bytes"]
    assert [n["name"] for n in manifest["networks"]] == [sample.network]
    assert manifest["networks"][0]["dns_enabled"] is True
    assert len(manifest["images"]) == 1
    assert manifest["images"][0]["names"]
    assert manifest["primary_service"] == "client"
    assert manifest["source"]["node"] == "a"
    assert manifest["source"]["podman_version"]
    # Backup mode: the project keeps running and its memory moves on.
    for svc, container in sample.containers.items():
        assert node_a.container_state(container) == "running"
        if svc in before:
            assert read_counter(node_a, container) >= before[svc]


@pytest.fixture
def fresh_image(node_a, node_b, testbed) -> Iterator[str]:
    """An image only node a has (its own id), so a migration must ship it."""
    ref = f"localhost/mig-{secrets.token_hex(4)}:test"
    with open(testbed.image_tar, "rb") as f:
        import httpx

        with httpx.Client(transport=httpx.HTTPTransport(uds=testbed.socket("a"))) as c:
            r = c.post("http://d/v5.0.0/libpod/images/import", params={"reference": ref},
                       content=f.read(), headers={"Content-Type": "application/x-tar"})
            assert r.status_code == 200, r.text
    assert not node_b.image_exists(ref)
    yield ref
    for lp in (node_a, node_b):
        with contextlib.suppress(PodmanNotFound):
            lp.remove_image(ref, force=True)


def test_migrate_moves_memory_volume_and_dns_to_a_fresh_node(
    stack, testbed, node_a, node_b, fresh_image
):
    project = f"m{secrets.token_hex(4)}"
    sample = create_sample(node_a, project, fresh_image)
    try:
        c = sample.containers
        seed = node_a.exec(c["db"], ["cat", "/data/seed"]).stdout.decode().strip()
        assert seed.startswith("seed-")
        before = {svc: read_counter(node_a, name) for svc, name in c.items()}
        ok_before = read_counter(node_a, c["client"], "/tmp/ok")
        result = api.migrate(stack.app, project, "a", "b")
        value = result.get(timeout=300)
        assert value["checkpoint"]["checkpoint_id"] == value["restore"]["checkpoint_id"]
        assert value["restore"]["node"] == "b"
        assert value["restore"]["primary_service"] == "client"
        assert set(value["restore"]["services"]) == {"client", "db", "web"}
        for svc, name in c.items():
            assert node_b.container_state(name) == "running"
            if svc != "client":
                # Memory survived: a cold start would count from 1 again.
                assert read_counter(node_b, name) >= before[svc], svc
            with pytest.raises(PodmanNotFound):  # the dumped husk was removed after commit
                node_a.container_state(name)
        assert value["checkpoint"]["source_removed"]
        assert node_b.exec(c["db"], ["cat", "/data/seed"]).stdout.decode().strip() == seed
        import time

        deadline = time.monotonic() + 20
        ok_after = read_counter(node_b, c["client"], "/tmp/ok")
        while ok_after <= ok_before and time.monotonic() < deadline:
            time.sleep(0.3)
            ok_after = read_counter(node_b, c["client"], "/tmp/ok")
        assert ok_after > ok_before, "client no longer reaches web by name on node b"
        assert ok_before > 0
    finally:
        remove_sample(node_a, sample)
        remove_sample(node_b, sample)


def test_failing_service_fails_the_chord_clean_and_rolls_back(stack, testbed, sample, node_a):
    c = dict(sample.containers)
    # An established TCP connection cannot be dumped without tcp_established: CRIU refuses
    # this service (and web, the other end), while db and client dump fine and stop.
    holder = f"{sample.project}-holder-1"
    node_a.create_container({
        "name": holder, "image": testbed.image,
        "command": ["sh", "-c", "sleep 1000 | nc web 80"],
        "labels": {"com.docker.compose.project": sample.project,
                   "com.docker.compose.service": "holder"},
        "networks": {sample.network: {}},
    })
    node_a.start(holder)
    c["holder"] = holder
    import time

    time.sleep(1.0)
    before = {svc: read_counter(node_a, c[svc]) for svc in ("db", "web")}
    try:
        result = api.checkpoint(
            stack.app, sample.project, "a", {"leave_running": False, "tcp_established": False}
        )
        with pytest.raises(CheckpointAborted) as info:
            result.get(timeout=240)
        text = str(info.value)
        prefix = f"pc/projects/{sample.project}/"
        assert objects_under(testbed, stack.bucket, prefix) == []
        assert open_uploads(testbed, stack.bucket, prefix) == []
        assert not list((stack.workers["a"].spool).glob("*/*.tar")), "spool files left behind"
        # Everything runs again on node a, with its memory: nothing was lost.
        for svc, name in c.items():
            assert node_a.container_state(name) == "running", (svc, text)
        for svc in ("db", "web"):
            assert read_counter(node_a, c[svc]) >= before[svc], svc
        assert "running again on a" in text, text
        assert "db" in text, text
    finally:
        node_a.remove(holder, force=True)


def test_refusals_touch_nothing(stack, testbed, sample, node_a):
    from tasks.errors import ProjectError

    with pytest.raises(ProjectError, match="no containers"):
        api.checkpoint(stack.app, "nosuchproject", "a").get(timeout=60)
    node_a.stop(sample.containers["web"], timeout_s=2)
    with pytest.raises(ProjectError, match="not running"):
        api.checkpoint(stack.app, sample.project, "a").get(timeout=60)
    assert node_a.container_state(sample.containers["db"]) == "running"
    assert node_a.container_state(sample.containers["client"]) == "running"
    with pytest.raises(Exception, match="unknown option"):
        api.checkpoint(stack.app, sample.project, "a", {"bogus": 1})
    with pytest.raises(Exception, match="invalid project name"):
        api.checkpoint(stack.app, "../etc", "a")


def test_duplicate_service_is_refused(stack, testbed, sample, node_a):
    from tasks.errors import ProjectError

    extra = f"{sample.project}-web-2"
    node_a.create_container({
        "name": extra, "image": testbed.image, "command": ["sleep", "300"],
        "labels": {"com.docker.compose.project": sample.project,
                   "com.docker.compose.service": "web"},
    })
    node_a.start(extra)
    try:
        with pytest.raises(ProjectError, match="repeats"):
            api.checkpoint(stack.app, sample.project, "a").get(timeout=60)
        for name in sample.containers.values():
            assert node_a.container_state(name) == "running"
    finally:
        node_a.remove(extra, force=True)


def test_deadline_with_no_worker_for_the_node_fails_in_time(stack):
    import time

    from tasks.errors import DeadlineExceeded

    start = time.monotonic()
    result = api.checkpoint(stack.app, "someproject", "nowhere", {"deadline_s": 3})
    with pytest.raises(DeadlineExceeded, match="not committed by its deadline"):
        result.get(timeout=60)
    assert time.monotonic() - start < 30
