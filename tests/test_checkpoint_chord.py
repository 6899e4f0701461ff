"""The checkpoint chord on the real stack: Redis, moto's S3 server, `celery worker`s, Podman."""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterator

import boto3
import pytest

from tasks import api
from tasks.libpod import Libpod
from tasks.store import open_store
from workers.sample import SampleProject, create_sample, read_counter, remove_sample

pytestmark = pytest.mark.podman


@pytest.fixture
def node_a(testbed) -> Iterator[Libpod]:
    with Libpod.from_socket(testbed.socket("a")) as lp:
        yield lp


@pytest.fixture
def node_b(testbed) -> Iterator[Libpod]:
    with Libpod.from_socket(testbed.socket("b")) as lp:
        yield lp


@pytest.fixture
def sample(node_a, node_b, testbed) -> Iterator[SampleProject]:
    project = f"p{secrets.token_hex(4)}"
    made = create_sample(node_a, project, testbed.image)
    yield made
    remove_sample(node_a, made)
    remove_sample(node_b, made)


def s3(testbed):
    return boto3.client("s3", endpoint_url=testbed.s3_endpoint)


def objects_under(testbed, bucket: str, prefix: str) -> list[str]:
    resp = s3(testbed).list_objects_v2(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for o in resp.get("Contents", [])]


def open_uploads(testbed, bucket: str, prefix: str) -> list[str]:
    resp = s3(testbed).list_multipart_uploads(Bucket=bucket, Prefix=prefix)
    return [u["Key"] for u in resp.get("Uploads", [])]


def test_backup_checkpoint_commits_a_verified_manifest(stack, testbed, sample, node_a):
    before = {svc: read_counter(node_a, c) for svc, c in sample.containers.items() if svc != "client"}
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
    assert len(manifest["images"]) == 1 and manifest["images"][0]["names"]
    assert manifest["primary_service"] == "client"
    assert manifest["source"]["node"] == "a" and manifest["source"]["podman_version"]
    # Backup mode: the project keeps running and its memory moves on.
    for svc, container in sample.containers.items():
        assert node_a.container_state(container) == "running"
        if svc in before:
            assert read_counter(node_a, container) >= before[svc]
