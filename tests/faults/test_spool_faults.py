"""Local disk faults: a full or read-only spool folder on the target or the source node.

Each worker here gets its spool folder on a tmpfs of its own (mounted by this test, as
root, and unmounted after): 64 KiB is full long before one archive fits.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks import api
from tasks.errors import CheckpointAborted, MigrationFailed, SpoolUnavailable
from tasks.store import open_store
from tests.conftest import _unavailable
from tests.faults.conftest import RESULT_TIMEOUT_S, states, wait_until
from tests.stack import objects_under, open_uploads, spool_files
from tests.test_restore_flow import assert_untouched

pytestmark = pytest.mark.podman


@pytest.fixture
def tmpfs() -> Iterator:
    """``tmpfs(path, size, ro=False)`` mounts a tmpfs; all are unmounted at teardown."""
    mounted: list[Path] = []

    def mount(path: Path, size: str = "64k", ro: bool = False) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        opts = f"size={size},mode=0700" + (",ro" if ro else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            _unavailable(f"cannot mount a tmpfs (needs root): {done.stderr.strip()}")
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        with contextlib.suppress(subprocess.CalledProcessError):
            subprocess.run(["umount", "-l", str(path)], check=True, capture_output=True)


def test_full_target_spool_fails_the_migration_and_the_workload_goes_home(
    tmpfs, mini_stack, testbed, sample, node_a, node_b
):
    ms = mini_stack(
        {"a": testbed.socket("a"), "b": testbed.socket("b")},
        prepare=lambda work: tmpfs(work / "spool-b"),
    )
    with pytest.raises(MigrationFailed, match="No space left") as info:
        api.migrate(ms.app, sample.project, "a", "b").get(timeout=RESULT_TIMEOUT_S)
    fallback = info.value.fallback_task_id
    assert fallback, repr(info.value)
    assert f"(task {fallback})" in str(info.value), repr(info.value)
    ms.app.AsyncResult(fallback).get(timeout=RESULT_TIMEOUT_S)
    # The workload runs again on the source, nothing of it on the target.
    assert set(states(node_a, sample).values()) == {"running"}, states(node_a, sample)
    assert_untouched(node_b, sample)
    assert spool_files(ms.workers["b"]) == []
    assert spool_files(ms.workers["a"]) == []
    # A direct restore on the full node: a typed error naming the folder, nothing changed.
    store = open_store(ms.store_url)
    [entry] = [e for e in store.list_checkpoints(sample.project) if e.committed]
    for name in sample.containers.values():
        node_a.stop(name, timeout_s=2)  # the restored ones may not run twice on one kernel
    with pytest.raises(SpoolUnavailable, match="spool-b") as info2:
        api.restore(ms.app, f"{sample.project}/{entry.checkpoint_id}", "b").get(
            timeout=RESULT_TIMEOUT_S
        )
    assert "No space left" in str(info2.value)
    assert_untouched(node_b, sample)


def test_read_only_source_spool_refuses_an_eviction_before_anything_stops(
    tmpfs, mini_stack, testbed, sample, node_a
):
    ms = mini_stack(
        {"a": testbed.socket("a")}, prepare=lambda work: tmpfs(work / "spool-a", ro=True)
    )
    with pytest.raises(CheckpointAborted, match="spool") as info:
        api.checkpoint(ms.app, sample.project, "a", {"leave_running": False}).get(
            timeout=RESULT_TIMEOUT_S
        )
    assert "SpoolUnavailable" in str(info.value), info.value
    assert "nothing was dumped" in str(info.value), info.value
    assert set(states(node_a, sample).values()) == {"running"}, states(node_a, sample)
    prefix = f"pc/projects/{sample.project}/"
    assert objects_under(testbed, ms.bucket, prefix) == []
    assert open_uploads(testbed, ms.bucket, prefix) == []


def test_source_spool_full_mid_eviction_never_loses_the_workload(
    tmpfs, mini_stack, testbed, sample, node_a
):
    # The spool fills up while the archives stream to S3 (the containers are stopped by
    # then): the checkpoint must still commit from the uploads, or roll back from somewhere.
    ms = mini_stack({"a": testbed.socket("a")}, prepare=lambda work: tmpfs(work / "spool-a"))
    result = api.checkpoint(ms.app, sample.project, "a", {"leave_running": False})
    failure: CheckpointAborted | None = None
    try:
        summary = result.get(timeout=RESULT_TIMEOUT_S)
    except CheckpointAborted as exc:
        failure = exc
    if failure is not None:
        assert set(states(node_a, sample).values()) == {"running"}, failure
        assert objects_under(testbed, ms.bucket, f"pc/projects/{sample.project}/") == []
    else:
        store = open_store(ms.store_url)
        assert store.exists(store.layout.manifest(sample.project, summary["checkpoint_id"]))
        assert sorted(summary["services"]) == sorted(sample.containers)
    wait_until(lambda: spool_files(ms.workers["a"]) == [], 30, "spool files removed")
