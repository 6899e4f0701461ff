"""Redis (broker and results) crashes and comes back in the middle of a migration's chord.

The workers and the client of this test use a redis-server of their own (append-only file,
fsync always, as production should run it), killed with SIGKILL and started again on the
same port; the test bed's Redis is never touched. The outcome must be a completed migration
or a clean failure: never a manifest without all its archives, and the workload running on
one node.
"""

from __future__ import annotations

import json
import time

import pytest
import redis
from celery.exceptions import CeleryError

from tasks import api
from tasks.errors import PodchordError
from tasks.store import open_store
from tests.faults.conftest import states
from tests.stack import s3

pytestmark = pytest.mark.podman

OUTCOME_TIMEOUT_S = 200


def wait_outcome(result, timeout_s: float):
    """The result's value or exception, riding out the client's own Redis reconnects."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if result.ready():
                try:
                    return result.get(timeout=10, propagate=True)
                except (PodchordError, CeleryError) as exc:
                    return exc
        except (redis.RedisError, OSError):
            pass
        time.sleep(1.0)
    return None


def test_redis_crash_mid_chord_completes_or_fails_clean(
    own_redis, mini_stack, testbed, sample, node_a, node_b
):
    # A short visibility timeout: a task cancelled by the lost connection is redelivered
    # after it, not after the production default of task timeout + 5 minutes.
    ms = mini_stack(
        {"a": testbed.socket("a"), "b": testbed.socket("b")},
        env={"PODCHORD_VISIBILITY_TIMEOUT_S": "30"},
        redis_base=own_redis.base_url,
    )
    result = api.migrate(ms.app, sample.project, "a", "b", {"deadline_s": 90})
    deadline = time.monotonic() + 60
    while result.state != "PROGRESS":
        assert time.monotonic() < deadline, "the migration never started"
        time.sleep(0.05)
    time.sleep(0.5)
    own_redis.kill()  # the chord's header tasks are running now
    time.sleep(2.0)
    own_redis.start()
    time.sleep(10.0)  # long enough for a worker to reconnect, or to die trying
    dead = {n: w.log.read_text() for n, w in ms.workers.items() if w.proc.poll() is not None}
    # kombu 5.7 used to crash every busy worker here ('NoneType' object has no attribute
    # 'hostname' while requeueing its unacked messages); workers/kombu_fix.py guards it.
    assert not dead, f"workers died: { {n: t[-3000:] for n, t in dead.items()} }"
    outcome = wait_outcome(result, OUTCOME_TIMEOUT_S)
    where = {"a": states(node_a, sample), "b": states(node_b, sample)}
    store = open_store(ms.store_url)
    committed = [e for e in store.list_checkpoints(sample.project) if e.committed]
    # Never a manifest without all its archives, whatever the outcome.
    for entry in committed:
        manifest = json.loads(store.read_manifest(sample.project, entry.checkpoint_id))
        for svc in manifest["services"]:
            head = s3(testbed).head_object(Bucket=ms.bucket, Key=svc["archive"]["key"])
            assert head["ContentLength"] == svc["archive"]["size_bytes"], svc["name"]
    assert outcome is not None, f"no outcome after {OUTCOME_TIMEOUT_S}s; workload: {where}"
    running_on = [n for n, s in where.items() if set(s.values()) == {"running"}]
    assert len(running_on) == 1, f"outcome {outcome!r}; workload: {where}"
    if isinstance(outcome, dict):
        assert running_on == ["b"], where
        assert committed, "migrated without a committed checkpoint"
