"""A client's deadline covers the checkpoint only: it never fails a migration that restores.

`tasks.api.migrate(..., {"deadline_s": N})` queues a watchdog that knows only the task id.
A migration whose checkpoint committed in time is restoring on the target when the watchdog
fires; marking it failed then (and releasing its lock) would tell the caller to cold-start a
workload that is about to run, and let a second migration in under the restore.
"""

from __future__ import annotations

import time

import pytest
from celery.result import AsyncResult

from tasks import api, lock
from tests.faults.conftest import RESULT_TIMEOUT_S, states
from tests.faults.proxies import S3FaultProxy

pytestmark = pytest.mark.podman

DEADLINE_S = 30.0
# The watchdog fires at deadline + 2 s (tasks.api): the restore's downloads wait past it.
HOLD_DOWNLOADS_UNTIL_S = DEADLINE_S + 10


def test_migration_restoring_past_its_deadline_is_not_failed(testbed, mini_stack, sample,
                                                              node_a, node_b):
    with S3FaultProxy(testbed.s3_endpoint) as proxy:
        ms = mini_stack({"a": testbed.socket("a"), "b": testbed.socket("b")},
                        env={"AWS_ENDPOINT_URL": proxy.url})
        start = time.monotonic()

        def hold_archive_downloads(method: str, path: str, query) -> None:
            if method == "GET" and path.endswith((".tar", ".tar.zst")) and "/services/" in path:
                time.sleep(max(0.0, start + HOLD_DOWNLOADS_UNTIL_S - time.monotonic()))
            return None

        proxy.rule = hold_archive_downloads
        result = api.migrate(ms.app, sample.project, "a", "b", {"deadline_s": DEADLINE_S})
        client = ms.app.backend.client
        # Past the watchdog, while the target still waits for its downloads.
        time.sleep(max(0.0, start + DEADLINE_S + 5 - time.monotonic()))
        seen = AsyncResult(result.id, app=ms.app).state
        assert seen not in ("FAILURE", "SUCCESS"), f"state {seen} while the restore runs"
        assert lock.holder(client, sample.project) == result.id, "the watchdog dropped the lock"
        done = result.get(timeout=RESULT_TIMEOUT_S)
        assert proxy.ops("GET"), "the restore downloaded nothing through the proxy"
    assert done["checkpoint"]["checkpoint_id"]
    assert set(states(node_b, sample).values()) == {"running"}, states(node_b, sample)
    assert "running" not in states(node_a, sample).values()
    assert lock.holder(client, sample.project) is None
