"""SIGKILL a worker's pool mid-task: the run completes or fails clean, never half-done.

Late acks plus requeue-on-worker-loss redeliver the killed tasks. The promise checked by
every case: a manifest exists only with every archive intact; the workload runs, exactly
once, somewhere; nothing is left on the node that does not run it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import time

import pytest
from celery.exceptions import CeleryError

from tasks import api
from tasks.errors import PodchordError
from tasks.libpod import Libpod
from tasks.store import open_store
from tests.stack import objects_under, s3, spool_files
from workers.launch import WorkerProcess
from workers.sample import (
    SampleProject,
    container_exists,
    read_counter,
)

pytestmark = pytest.mark.podman

WAIT_S = 300
# Counters above this can only come from restored memory (a cold start counts from 1).
WARM = 30


def _pool_children(worker: WorkerProcess) -> list[int]:
    with open(f"/proc/{worker.proc.pid}/task/{worker.proc.pid}/children") as f:
        return [int(p) for p in f.read().split()]


def _kill_pool_on(worker: WorkerProcess, task: str, after_s: float, timeout_s: float = 90) -> None:
    """SIGKILL every pool process ``after_s`` after ``task`` is received by ``worker``."""
    seen = worker.log.read_text().count(f"Task {task}[")
    deadline = time.monotonic() + timeout_s
    while worker.log.read_text().count(f"Task {task}[") <= seen:
        assert time.monotonic() < deadline, f"{task} never reached worker {worker.node}"
        time.sleep(0.02)
    time.sleep(after_s)
    for child in _pool_children(worker):
        os.kill(child, signal.SIGKILL)


def _lost_workers(worker: WorkerProcess) -> int:
    return len(re.findall(r"WorkerLostError", worker.log.read_text()))


def _wait(result) -> dict | None:
    try:
        return result.get(timeout=WAIT_S)
    except (PodchordError, CeleryError):
        return None


def _committed(stack, project: str) -> list[str]:
    store = open_store(stack.store_url)
    return [e.checkpoint_id for e in store.list_checkpoints(project) if e.committed]


def _assert_archives_intact(stack, testbed, project: str, checkpoint_id: str) -> None:
    store = open_store(stack.store_url)
    manifest = json.loads(store.read_manifest(project, checkpoint_id))
    client = s3(testbed)
    for svc in manifest["services"]:
        body = client.get_object(Bucket=stack.bucket, Key=svc["archive"]["key"])["Body"].read()
        assert hashlib.sha256(body).hexdigest() == svc["archive"]["sha256"], svc["name"]


def _warm(lp: Libpod, sample: SampleProject) -> dict[str, int]:
    deadline = time.monotonic() + 60
    while read_counter(lp, sample.containers["web"]) < WARM:
        assert time.monotonic() < deadline
        time.sleep(0.3)
    return {s: read_counter(lp, sample.containers[s]) for s in ("db", "web")}


def test_kill_while_launching_the_chord_relaunches_the_same_checkpoint(
    stack, testbed, sample, node_a
):
    worker = stack.workers["a"]
    lost = _lost_workers(worker)
    result = api.checkpoint(stack.app, sample.project, "a", {"leave_running": True})
    _kill_pool_on(worker, "podchord.checkpoint_project", after_s=0.0)
    summary = _wait(result)
    assert _lost_workers(worker) > lost, "the kill did not hit a running task"
    ids = _committed(stack, sample.project)
    assert summary is not None, result.result
    # One checkpoint, not a second one planned by the redelivery next to a stranded first.
    assert ids == [summary["checkpoint_id"]]
    _assert_archives_intact(stack, testbed, sample.project, summary["checkpoint_id"])
    prefix = f"pc/projects/{sample.project}/"
    keys = objects_under(testbed, stack.bucket, prefix)
    assert all(summary["checkpoint_id"] in k for k in keys), "stray checkpoint objects"
    for name in sample.containers.values():
        assert node_a.container_state(name) == "running"


@pytest.mark.parametrize("leave_running", [False, True], ids=["eviction", "backup"])
def test_kill_mid_export_never_loses_the_workload(stack, testbed, sample, node_a, leave_running):
    # Both modes dump with the container stopped (a backup resumes it in place), so a kill
    # in the middle can leave it dumped and stopped: the redelivery or the rollback must
    # bring it back from its kept CRIU images.
    worker = stack.workers["a"]
    before = _warm(node_a, sample)
    lost = _lost_workers(worker)
    result = api.checkpoint(stack.app, sample.project, "a", {"leave_running": leave_running})
    _kill_pool_on(worker, "podchord.checkpoint_service", after_s=0.3)
    summary = _wait(result)
    assert _lost_workers(worker) > lost, "the kill did not hit a running task"
    ids = _committed(stack, sample.project)
    c = sample.containers
    if summary is None:
        # Failed clean: no manifest, and every service runs again with its memory.
        assert ids == [], f"failed ({result.result}) yet a manifest exists"
    else:
        assert ids == [summary["checkpoint_id"]]
        _assert_archives_intact(stack, testbed, sample.project, summary["checkpoint_id"])
        if not leave_running:
            # Evicted: the archives hold the memory. Restore in place and look.
            restored = api.restore(
                stack.app, f"{sample.project}/{summary['checkpoint_id']}", "a",
                {"ignore_volumes": True},
            ).get(timeout=WAIT_S)
            assert set(restored["services"]) == set(c)
    for svc, name in c.items():
        assert node_a.container_state(name) == "running", svc
    for svc in ("db", "web"):
        assert read_counter(node_a, c[svc]) >= before[svc], svc


def test_kill_mid_restore_of_a_migration_runs_the_workload_exactly_once(
    stack, testbed, sample, node_a, node_b
):
    worker = stack.workers["b"]
    before = _warm(node_a, sample)
    lost = _lost_workers(worker)
    result = api.migrate(stack.app, sample.project, "a", "b")
    _kill_pool_on(worker, "podchord.restore_after_checkpoint", after_s=1.0)
    outcome = _wait(result)
    assert _lost_workers(worker) > lost, "the kill did not hit a running task"
    c = sample.containers
    if outcome is not None:
        here, gone = node_b, node_a
    else:
        # The migration failed: its fallback restores the workload on the source.
        fallback = getattr(result.result, "fallback_task_id", None)
        assert fallback, f"failed without a fallback: {result.result!r}"
        stack.app.AsyncResult(fallback).get(timeout=WAIT_S)
        here, gone = node_a, node_b
    for svc, name in c.items():
        assert here.container_state(name) == "running", svc
        assert not container_exists(gone, name), f"{svc} exists on both nodes"
    for svc in ("db", "web"):
        assert read_counter(here, c[svc]) >= before[svc], svc
    # The killed delivery's downloaded archives (process memory) did not stay behind.
    assert spool_files(worker) == []


def test_a_redelivered_commit_is_committed_once(stack, testbed, sample, node_a):
    """commit_manifest killed after its put: the redelivery finds the same manifest and
    reports success instead of failing the checkpoint (and rolling it back)."""
    from tasks import checkpoint as ck
    from tasks.options import CheckpointJobOptions

    store = open_store(stack.store_url)
    plan = ck.plan_checkpoint(
        node_a, store, sample.project, "a", CheckpointJobOptions(leave_running=True)
    )
    results = [
        ck.checkpoint_service(node_a, store, plan, svc, spool_dir=stack.workers["a"].spool)
        for svc in plan["services"]
    ]
    images = [ck.ship_image(node_a, store, i["id"], i["ref"]) for i in plan["images"]]
    first = ck.commit_manifest(store, plan, results, images)
    second = ck.commit_manifest(store, plan, results, images)
    assert second["manifest_key"] == first["manifest_key"]
    assert _committed(stack, sample.project) == [plan["checkpoint_id"]]
    # A different checkpoint under the same id is still refused.
    from tasks.errors import ManifestExists

    with pytest.raises(ManifestExists):
        ck.commit_manifest(store, plan, results[:-1], images)
