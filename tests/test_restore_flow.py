"""Restore on a target worker, on the real stack: Redis, moto's S3 server, workers, Podman+CRIU.

One backup checkpoint of a sample project on node a is taken per module; the failure tests
restore *clones* of it (same archives copied under a fresh checkpoint id, manifest rewritten
to match), each corrupted in one way, so that the original stays restorable for the others.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tasks import api, lock
from tasks.errors import PodmanNotFound
from tasks.keys import new_checkpoint_id
from tasks.libpod import Libpod
from tasks.store import open_store
from tests.stack import s3, spool_files
from workers.sample import SampleProject, create_sample, read_counter, remove_sample

pytestmark = pytest.mark.podman

SSE = {"ServerSideEncryption": "AES256"}
RESTORE_TIMEOUT_S = 240
# The sample counters tick 10 times a second. Before a checkpoint they are let run this far,
# so that a service that lost its memory (counting from 1 again) cannot pass as restored.
COLD_START_MARGIN = 100


@dataclass(frozen=True)
class Backup:
    """A sample project running on node a and one committed backup checkpoint of it."""

    sample: SampleProject
    checkpoint_id: str
    manifest: dict[str, Any]


@pytest.fixture(scope="module")
def backup(stack, testbed) -> Iterator[Backup]:
    project = f"r{secrets.token_hex(4)}"
    with Libpod.from_socket(testbed.socket("a")) as a, Libpod.from_socket(testbed.socket("b")) as b:
        sample = create_sample(a, project, testbed.image)
        try:
            summary = api.checkpoint(stack.app, project, "a", {"leave_running": True}).get(
                timeout=RESTORE_TIMEOUT_S
            )
            cid = summary["checkpoint_id"]
            manifest = json.loads(open_store(stack.store_url).read_manifest(project, cid))
            # Both test-bed nodes share one kernel, and a restored container keeps its id and
            # so its cgroup: it cannot be restored on b while the original still runs on a.
            for name in sample.containers.values():
                a.stop(name, timeout_s=2)
            yield Backup(sample, cid, manifest)
        finally:
            remove_sample(a, sample)
            remove_sample(b, sample)


def clone_checkpoint(
    stack,
    testbed,
    backup: Backup,
    *,
    edit_manifest: Callable[[dict[str, Any]], Any] | None = None,
    edit_archive: Callable[[str, bytes], bytes] | None = None,
    raw_manifest: bytes | None = None,
) -> str:
    """Copy ``backup``'s checkpoint under a new id (SSE kept); return the new id.

    ``edit_archive(service, body)`` may change a service archive's bytes, ``edit_manifest``
    the rewritten manifest document (in place, or by returning a new one), ``raw_manifest``
    replaces the manifest bytes entirely.
    """
    client = s3(testbed)
    project = backup.sample.project
    new_id = new_checkpoint_id()
    doc = json.loads(json.dumps(backup.manifest))
    doc["checkpoint_id"] = new_id
    for svc in doc["services"]:
        arch = svc["archive"]
        body = client.get_object(Bucket=stack.bucket, Key=arch["key"])["Body"].read()
        if edit_archive is not None:
            body = edit_archive(svc["name"], body)
        arch["key"] = arch["key"].replace(backup.checkpoint_id, new_id)
        assert new_id in arch["key"]
        client.put_object(Bucket=stack.bucket, Key=arch["key"], Body=body, **SSE)
    if edit_manifest is not None:
        doc = edit_manifest(doc) or doc
    data = raw_manifest if raw_manifest is not None else json.dumps(doc).encode()
    key = open_store(stack.store_url).layout.manifest(project, new_id)
    client.put_object(Bucket=stack.bucket, Key=key, Body=data, **SSE)
    return new_id


def flip_one_byte(body: bytes) -> bytes:
    at = len(body) // 2
    return body[:at] + bytes([body[at] ^ 0x01]) + body[at + 1 :]


def wait_counter(lp: Libpod, container: str, at_least: int, timeout_s: float = 60) -> int:
    """Wait until a sample counter reaches ``at_least``, so that a cold start (counting from 1
    again after a restore) cannot pass for restored memory."""
    deadline = time.monotonic() + timeout_s
    while (n := read_counter(lp, container)) < at_least:
        assert time.monotonic() < deadline, f"{container} counter stuck at {n}"
        time.sleep(0.5)
    return n


def assert_untouched(lp: Libpod, sample: SampleProject) -> None:
    """Nothing of the sample exists on the node ``lp`` talks to."""
    for name in sample.containers.values():
        with pytest.raises(PodmanNotFound):
            lp.container_state(name)
    assert not lp.network_exists(sample.network)


def restore_error(
    stack, ref: str, node: str, options: dict[str, Any] | None = None
) -> BaseException:
    """The exception a restore fails with. Its type is checked by name by the callers, so
    that a type Celery could not rebuild on this side fails with a readable message."""
    try:
        api.restore(stack.app, ref, node, options).get(timeout=RESTORE_TIMEOUT_S)
    except Exception as exc:  # returned for the caller to check
        return exc
    pytest.fail(f"restore of {ref} on {node} succeeded")


class RemoteTypeLost(Exception):
    """The worker raised the right error, but the caller got one of its base classes."""


def assert_remote_type(exc: BaseException, name: str) -> None:
    """``exc`` is of the podchord error type ``name``, as the caller must see it.

    Celery (JSON results) rebuilds a remote error as ``cls(*exc.args)``; an error class whose
    constructor needs more than the message (``IntegrityError(msg, *, key, expected, actual)``)
    cannot be rebuilt, and the worker already downgrades it to the nearest base class that
    can (``StoreError``). That known bug raises :class:`RemoteTypeLost`, so that tests can
    mark it as an expected failure without hiding any other assertion.
    """
    from tasks import errors

    want = getattr(errors, name)
    if type(exc) is want:
        return
    if issubclass(want, type(exc)):
        raise RemoteTypeLost(f"expected {name}, got its base {type(exc).__name__}: {exc!r}")
    raise AssertionError(f"expected {name}, got {exc!r}")



def assert_restore_result(result: dict[str, Any], checkpoint_id: str, node: str,
                          sample: SampleProject) -> None:
    assert result["checkpoint_id"] == checkpoint_id
    assert result["node"] == node
    assert result["primary_service"] == "client"
    assert set(result["services"]) == set(sample.containers)
    for svc, info in result["services"].items():
        assert info["container"] == sample.containers[svc]
        assert info["state"] == "running"
        assert isinstance(info["id"], str), info
        assert len(info["id"]) == 64, info
    timings = result["timings"]
    for phase in ("manifest", "preflight", "download", "images", "networks", "restore", "total"):
        assert isinstance(timings[f"{phase}_s"], int | float), timings
        assert timings[f"{phase}_s"] >= 0, timings
    assert timings["total_s"] >= timings["restore_s"]


def test_clean_clone_restores_on_b_with_the_full_result(stack, testbed, backup, node_b):
    # The control for the corruption tests below: the clone helper itself yields a
    # restorable checkpoint, so their failures are the corruption's doing.
    sample = backup.sample
    cid = clone_checkpoint(stack, testbed, backup)
    try:
        result = api.restore(stack.app, f"{sample.project}/{cid}", "b").get(
            timeout=RESTORE_TIMEOUT_S
        )
        assert_restore_result(result, cid, "b", sample)
        assert result["source_node"] == "a"
        for svc, name in sample.containers.items():
            assert node_b.container_state(name) == "running"
            assert result["services"][svc]["id"] == node_b.inspect_container(name)["Id"]
        assert node_b.network_exists(sample.network)
    finally:
        remove_sample(node_b, sample)


def test_flipped_byte_in_an_archive_fails_before_podman_is_touched(
    stack, testbed, backup, node_b
):
    sample = backup.sample
    cid = clone_checkpoint(
        stack, testbed, backup,
        edit_archive=lambda svc, body: flip_one_byte(body) if svc == "web" else body,
    )
    try:
        exc = restore_error(stack, f"{sample.project}/{cid}", "b")
        assert f"{cid}/services/web.tar" in str(exc), str(exc)
        assert "sha256" in str(exc), str(exc)
        assert_untouched(node_b, sample)
        leftovers = spool_files(stack.workers["b"])
        assert leftovers == [], "spool files left behind"
        assert_remote_type(exc, "IntegrityError")
    finally:
        remove_sample(node_b, sample)


@pytest.mark.parametrize(
    "bad_key",
    [
        lambda key: key.rsplit("/", 2)[0] + "/services/../../other/services/db.tar",
        lambda key: "/" + key,
        lambda key: "/etc/passwd",
    ],
    ids=["dotdot", "absolute", "absolute-outside"],
)
def test_escaping_archive_key_is_refused(stack, testbed, backup, node_b, bad_key):
    sample = backup.sample

    def edit(doc):
        arch = doc["services"][0]["archive"]
        arch["key"] = bad_key(arch["key"])

    cid = clone_checkpoint(stack, testbed, backup, edit_manifest=edit)
    try:
        exc = restore_error(stack, f"{sample.project}/{cid}", "b")
        assert_remote_type(exc, "ManifestInvalid")
        assert "archive key" in str(exc), str(exc)
        assert_untouched(node_b, sample)
    finally:
        remove_sample(node_b, sample)


def test_unknown_schema_version_is_refused(stack, testbed, backup, node_b):
    sample = backup.sample

    def edit(doc):
        doc["schema_version"] = 99

    cid = clone_checkpoint(stack, testbed, backup, edit_manifest=edit)
    try:
        exc = restore_error(stack, f"{sample.project}/{cid}", "b")
        assert_remote_type(exc, "ManifestInvalid")
        assert "schema_version 99" in str(exc), str(exc)
        assert_untouched(node_b, sample)
    finally:
        remove_sample(node_b, sample)


def test_huge_manifest_is_refused_unread(stack, testbed, backup, node_b):
    sample = backup.sample
    junk = secrets.token_bytes(10 * 1024 * 1024)
    cid = clone_checkpoint(stack, testbed, backup, raw_manifest=junk)
    try:
        exc = restore_error(stack, f"{sample.project}/{cid}", "b")
        assert f"{cid}/manifest.json" in str(exc), str(exc)
        assert str(len(junk)) in str(exc), str(exc)
        assert_untouched(node_b, sample)
        assert_remote_type(exc, "ObjectTooLarge")
    finally:
        remove_sample(node_b, sample)


def test_unknown_checkpoint_and_malformed_refs(stack, backup):
    from tasks.errors import InvalidInput, ObjectNotFound

    project = backup.sample.project
    missing = new_checkpoint_id()
    with pytest.raises(ObjectNotFound, match=f"no committed checkpoint {project}/{missing}"):
        api.restore(stack.app, f"{project}/{missing}", "b").get(timeout=60)
    nobody = f"n{secrets.token_hex(4)}"
    with pytest.raises(ObjectNotFound, match=f"project '{nobody}' has no committed checkpoint"):
        api.restore(stack.app, nobody, "b").get(timeout=60)
    for ref in ("../x", "a b", f"{project}/../x"):
        with pytest.raises(InvalidInput):
            api.restore(stack.app, ref, "b").get(timeout=60)


def test_running_same_named_container_conflicts_stopped_one_is_replaced(
    stack, testbed, node_a
):
    project = f"r{secrets.token_hex(4)}"
    sample = create_sample(node_a, project, testbed.image)
    try:
        c = sample.containers
        wait_counter(node_a, c["web"], COLD_START_MARGIN)
        # Read before the checkpoint: the dump holds at least these values.
        before = {svc: read_counter(node_a, c[svc]) for svc in ("db", "web")}
        summary = api.checkpoint(stack.app, project, "a", {"leave_running": True}).get(
            timeout=RESTORE_TIMEOUT_S
        )
        cid = summary["checkpoint_id"]
        after = {svc: read_counter(node_a, c[svc]) for svc in ("db", "web")}
        ids = {name: node_a.inspect_container(name)["Id"] for name in c.values()}
        # Running: refused before anything is destroyed.
        exc = restore_error(stack, f"{project}/{cid}", "a", {"ignore_volumes": True})
        assert_remote_type(exc, "PodmanConflict")
        assert "is running" in str(exc), str(exc)
        for svc, name in c.items():
            assert node_a.container_state(name) == "running", svc
            assert node_a.inspect_container(name)["Id"] == ids[name], "container was replaced"
        for svc in ("db", "web"):
            # Still the same process counting on.
            assert read_counter(node_a, c[svc]) >= after[svc], svc
        # Stopped: replaced by the restored ones.
        for name in c.values():
            node_a.stop(name, timeout_s=2)
            assert node_a.container_state(name) != "running"
        result = api.restore(stack.app, f"{project}/{cid}", "a", {"ignore_volumes": True}).get(
            timeout=RESTORE_TIMEOUT_S
        )
        assert_restore_result(result, cid, "a", sample)
        for name in c.values():
            assert node_a.container_state(name) == "running"
            assert any("replaced the stopped container " + name in n for n in result["notes"])
        # Restored memory, not a cold start (which would count from 1 again).
        for svc in ("db", "web"):
            assert read_counter(node_a, c[svc]) >= before[svc] >= COLD_START_MARGIN, svc
        assert result["services"]["db"]["id"] == node_a.inspect_container(c["db"])["Id"]
    finally:
        remove_sample(node_a, sample)


def test_in_place_restore_after_eviction(stack, testbed, node_a, node_b):
    project = f"r{secrets.token_hex(4)}"
    sample = create_sample(node_a, project, testbed.image)
    try:
        c = sample.containers
        seed = node_a.exec(c["db"], ["cat", "/data/seed"]).stdout.decode().strip()
        assert seed.startswith("seed-")
        wait_counter(node_a, c["web"], COLD_START_MARGIN)
        before = {svc: read_counter(node_a, c[svc]) for svc in ("db", "web")}
        summary = api.checkpoint(stack.app, project, "a", {"leave_running": False}).get(
            timeout=RESTORE_TIMEOUT_S
        )
        assert summary["mode"] == "eviction"
        cid = summary["checkpoint_id"]
        # The dumped containers were removed (their kept CRIU images with them).
        assert sorted(summary["source_removed"]) == sorted(c.values())
        for name in c.values():
            with pytest.raises(PodmanNotFound):
                node_a.container_state(name)
        result = api.restore(stack.app, f"{project}/{cid}", "a", {"ignore_volumes": True}).get(
            timeout=RESTORE_TIMEOUT_S
        )
        assert_restore_result(result, cid, "a", sample)
        for svc, name in c.items():
            assert node_a.container_state(name) == "running", svc
        for svc in ("db", "web"):
            assert read_counter(node_a, c[svc]) >= before[svc] >= COLD_START_MARGIN, svc
        assert node_a.exec(c["db"], ["cat", "/data/seed"]).stdout.decode().strip() == seed
        assert_untouched(node_b, sample)
    finally:
        remove_sample(node_a, sample)
        remove_sample(node_b, sample)


def test_missing_cpu_flags_refuse_the_restore_unless_forced(stack, testbed, backup, node_b):
    # Both nodes share one CPU, so the source's flags are edited to hold one this CPU lacks.
    sample = backup.sample

    def add_flag(doc: dict[str, Any]) -> None:
        doc["source"]["cpu_flags"] = [*doc["source"]["cpu_flags"], "podchord_no_such_flag"]

    cid = clone_checkpoint(stack, testbed, backup, edit_manifest=add_flag)
    ref = f"{sample.project}/{cid}"
    try:
        exc = restore_error(stack, ref, "b")
        assert "podchord_no_such_flag" in str(exc), str(exc)
        assert "force_cpu" in str(exc), str(exc)
        assert_remote_type(exc, "RestoreFailed")
        assert_untouched(node_b, sample)
        result = api.restore(stack.app, ref, "b", {"force_cpu": True}).get(
            timeout=RESTORE_TIMEOUT_S
        )
        assert any("podchord_no_such_flag" in n for n in result["notes"]), result["notes"]
        for name in sample.containers.values():
            assert node_b.container_state(name) == "running"
    finally:
        remove_sample(node_b, sample)


@pytest.fixture
def server_pair(stack, testbed, node_a, node_b) -> Iterator[SampleProject]:
    """db and web (no client, so no connection comes and goes), stopped on a after a backup
    (shared kernel: see the backup fixture)."""
    project = f"s{secrets.token_hex(4)}"
    sample = create_sample(node_a, project, testbed.image)
    node_a.remove(sample.containers["client"], force=True)
    yield sample
    remove_sample(node_a, sample)
    remove_sample(node_b, sample)


def _backup_then_stop(
    stack, sample: SampleProject, lp: Libpod, options: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """A backup of ``sample`` on a, whose services are then stopped there (shared kernel)."""
    summary = api.checkpoint(
        stack.app, sample.project, "a", {"leave_running": True, **options}
    ).get(timeout=RESTORE_TIMEOUT_S)
    cid = summary["checkpoint_id"]
    manifest = json.loads(open_store(stack.store_url).read_manifest(sample.project, cid))
    for name in ("db", "web"):
        lp.stop(sample.containers[name], timeout_s=2)
    return cid, manifest


def _squat_subnet(lp: Libpod, network: dict[str, Any]) -> str:
    from tasks.libpod_types import NetworkDef

    squatter = f"sq{secrets.token_hex(4)}"
    lp.create_network(NetworkDef.from_json({**network, "name": squatter}))
    return squatter


def test_a_taken_subnet_moves_the_network_and_dns_still_works(
    stack, server_pair, node_a, node_b
):
    sample = server_pair
    checkpoint_id, manifest = _backup_then_stop(stack, sample, node_a, {})
    recorded = manifest["networks"][0]
    assert recorded["subnets"], recorded
    squatter = _squat_subnet(node_b, recorded)
    try:
        result = api.restore(stack.app, f"{sample.project}/{checkpoint_id}", "b").get(
            timeout=RESTORE_TIMEOUT_S
        )
        assert any("another subnet" in n for n in result["notes"]), result["notes"]
        moved = node_b.inspect_network(sample.network)
        assert [s.subnet for s in moved.subnets] != [s["subnet"] for s in recorded["subnets"]]
        # db reaches web by its service name on the moved network.
        got = node_b.exec(sample.containers["db"], ["wget", "-q", "-O", "-", "http://web/"])
        assert got.stdout.decode().strip() == "hello-from-web", got
    finally:
        remove_sample(node_b, sample)
        node_b.remove_network(squatter, force=True)


def test_a_moved_network_cannot_carry_established_connections(
    stack, server_pair, node_a, node_b
):
    sample = server_pair
    # A connection db -> web that stays open across the checkpoint.
    node_a.exec(sample.containers["db"],
                ["sh", "-c", "(sleep 600 | nc web 80 >/dev/null 2>&1 &); sleep 0.5"])
    checkpoint_id, manifest = _backup_then_stop(
        stack, sample, node_a, {"tcp_established": True}
    )
    squatter = _squat_subnet(node_b, manifest["networks"][0])
    try:
        exc = restore_error(
            stack, f"{sample.project}/{checkpoint_id}", "b", {"tcp_established": True}
        )
        assert_remote_type(exc, "RestoreFailed")
        assert "established TCP connections cannot be restored" in str(exc), str(exc)
        assert_untouched(node_b, sample)
    finally:
        remove_sample(node_b, sample)
        node_b.remove_network(squatter, force=True)


def test_failed_migration_restore_falls_back_to_the_source(stack, testbed, node_a, node_b):
    project = f"f{secrets.token_hex(4)}"
    sample = create_sample(node_a, project, testbed.image)
    blocker = sample.containers["web"]
    try:
        c = sample.containers
        wait_counter(node_a, c["web"], COLD_START_MARGIN)
        before = {svc: read_counter(node_a, c[svc]) for svc in ("db", "web")}
        # A running container on b under a service's name: the target restore must refuse.
        node_b.create_container({"name": blocker, "image": testbed.image,
                                 "command": ["sleep", "600"]})
        node_b.start(blocker)
        result = api.migrate(stack.app, project, "a", "b")
        from tasks.errors import MigrationFailed

        with pytest.raises(MigrationFailed) as info:
            result.get(timeout=RESTORE_TIMEOUT_S)
        assert_remote_type(info.value, "MigrationFailed")
        assert "restoring it back on a" in str(info.value), str(info.value)
        fallback = stack.app.AsyncResult(info.value.fallback_task_id)
        # The migration handed its project lock to the fallback: no second migration can
        # take the project between the failure and the workload's return home.
        held_by = lock.holder(stack.app.backend.client, project)
        if held_by is None:  # the fallback was already done (it releases, then reports)
            fallback.get(timeout=30)
        else:
            assert held_by == fallback.id, held_by
        back = fallback.get(timeout=RESTORE_TIMEOUT_S)
        assert back["node"] == "a"
        assert lock.holder(stack.app.backend.client, project) is None
        for svc, name in c.items():
            assert node_a.container_state(name) == "running", svc
        for svc in ("db", "web"):
            assert read_counter(node_a, c[svc]) >= before[svc] >= COLD_START_MARGIN, svc
        # b kept its own container and got nothing of the project.
        assert node_b.container_state(blocker) == "running"
        for svc in ("db", "client"):
            with pytest.raises(PodmanNotFound):
                node_b.container_state(c[svc])
    finally:
        remove_sample(node_a, sample)
        remove_sample(node_b, sample)
