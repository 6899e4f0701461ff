"""A second migrate/checkpoint of a project that is being moved is refused, not interleaved."""

from __future__ import annotations

import secrets
import time

import pytest

from tasks import api, lock
from tasks.coord import TOMBSTONE, coordinator
from tasks.errors import DeadlineExceeded, LockHeld, ProjectError
from tasks.jobs import node_queue
from tasks.store import open_store
from tests.faults.conftest import RESULT_TIMEOUT_S, states

pytestmark = pytest.mark.podman


def lock_client(stack):
    return stack.app.backend.client


def test_held_lock_refuses_migrate_and_checkpoint_and_changes_nothing(stack, sample, node_a):
    client = lock_client(stack)
    token = f"other-{secrets.token_hex(4)}"
    lock.acquire(client, sample.project, token, 120, "migrate")
    try:
        with pytest.raises(LockHeld, match=f"task {token}") as info:
            api.migrate(stack.app, sample.project, "a", "b").get(timeout=60)
        assert sample.project in str(info.value)
        with pytest.raises(LockHeld, match="nothing was done"):
            api.checkpoint(stack.app, sample.project, "a", {"leave_running": True}).get(
                timeout=60
            )
        # Refused before anything was touched: the holder keeps it, the project runs on.
        assert lock.holder(client, sample.project) == token
        assert set(states(node_a, sample).values()) == {"running"}
    finally:
        assert lock.release(client, sample.project, token)
    summary = api.checkpoint(stack.app, sample.project, "a", {"leave_running": True}).get(
        timeout=RESULT_TIMEOUT_S
    )
    assert summary["project"] == sample.project
    assert lock.holder(client, sample.project) is None, "commit did not release the lock"


def test_two_migrations_at_once_never_interleave(stack, sample, node_a, node_b):
    first = api.migrate(stack.app, sample.project, "a", "b")
    second = api.migrate(stack.app, sample.project, "a", "b")
    outcomes = []
    for result in (first, second):
        try:
            outcomes.append(result.get(timeout=RESULT_TIMEOUT_S))
        except (LockHeld, ProjectError) as exc:
            outcomes.append(exc)
    wins = [o for o in outcomes if isinstance(o, dict)]
    assert len(wins) == 1, outcomes
    loser = next(o for o in outcomes if not isinstance(o, dict))
    # LockHeld while the first runs; ProjectError ("not running") if the first was already
    # done by the time the second was planned. Both mean: refused, nothing touched.
    assert isinstance(loser, LockHeld | ProjectError), loser
    assert set(states(node_b, sample).values()) == {"running"}, states(node_b, sample)
    assert "running" not in states(node_a, sample).values()
    assert lock.holder(lock_client(stack), sample.project) is None


def test_refused_checkpoint_releases_the_lock(stack, sample, node_a):
    client = lock_client(stack)
    node_a.stop(sample.containers["web"], timeout_s=2)
    with pytest.raises(ProjectError, match="not running"):
        api.checkpoint(stack.app, sample.project, "a").get(timeout=60)
    assert lock.holder(client, sample.project) is None, "a refused plan kept the lock"
    assert states(node_a, sample)["db"] == "running"


def test_lock_expires_and_release_checks_the_token(stack):
    client = lock_client(stack)
    project = f"f{secrets.token_hex(4)}"
    lock.acquire(client, project, "holder-1", 1, "migrate")
    with pytest.raises(LockHeld, match="holder-1"):
        lock.acquire(client, project, "holder-2", 60, "migrate")
    lock.acquire(client, project, "holder-1", 60, "migrate")  # the same task again: goes on
    assert not lock.release(client, project, "holder-2"), "released someone else's lock"
    assert lock.holder(client, project) == "holder-1"
    # A holder that died without releasing blocks the project only until the expiry.
    client.pexpire(lock.LOCK_PREFIX + project, 300)
    time.sleep(0.6)
    lock.acquire(client, project, "holder-2", 60, "migrate")
    assert lock.holder(client, project) == "holder-2"
    assert not lock.release(client, project, "holder-1"), "a stale holder released the lock"
    assert lock.release(client, project, "holder-2")
    assert lock.holder(client, project) is None


def test_lock_ttl_covers_deadline_and_restore():
    assert lock.lock_ttl_s(30, 3600) > 30 + 3600
    assert lock.lock_ttl_s(None, 3600) > 2 * 3600


def test_hand_over_moves_the_lock_only_from_its_holder(stack):
    client = lock_client(stack)
    project = f"h{secrets.token_hex(4)}"
    lock.acquire(client, project, "migration", 60, "migrate")
    assert not lock.hand_over(client, project, "someone-else", "thief", 60, "restore")
    assert lock.holder(client, project) == "migration"
    assert lock.hand_over(client, project, "migration", "fallback", 60, "restore")
    assert lock.holder(client, project) == "fallback"
    # The new holder goes on with its own id; the old one can no longer release it.
    lock.acquire(client, project, "fallback", 60, "restore")
    assert not lock.release(client, project, "migration")
    with pytest.raises(LockHeld, match="restore"):
        lock.acquire(client, project, "second-migration", 60, "migrate")
    assert lock.release(client, project, "fallback")


def test_held_lock_refuses_a_restore_and_it_creates_nothing(stack, sample, node_a, node_b):
    summary = api.checkpoint(stack.app, sample.project, "a", {"leave_running": True}).get(
        timeout=RESULT_TIMEOUT_S
    )
    ref = f"{sample.project}/{summary['checkpoint_id']}"
    client = lock_client(stack)
    token = f"migration-{secrets.token_hex(4)}"
    lock.acquire(client, sample.project, token, 120, "migrate")
    try:
        with pytest.raises(LockHeld, match=f"task {token}"):
            api.restore(stack.app, ref, "b").get(timeout=60)
        assert lock.holder(client, sample.project) == token
        assert set(states(node_b, sample).values()) == {"missing"}, states(node_b, sample)
        assert set(states(node_a, sample).values()) == {"running"}
    finally:
        assert lock.release(client, sample.project, token)


def test_a_checkpoint_that_starts_after_its_watchdog_fired_launches_nothing(stack, sample,
                                                                           node_a):
    # The deadline watchdog, finding no plan for a task, records a tombstone in its place;
    # the task, if it starts only then (it passed Celery's expiry check just in time), must
    # refuse instead of stopping services nobody waits for any more.
    task_id = f"late-{secrets.token_hex(6)}"
    coord = coordinator(stack.app.backend)
    assert coord is not None
    coord.plan_once(task_id, {TOMBSTONE: "deadline passed"})
    late = stack.app.send_task("podchord.checkpoint_project", args=(sample.project, "a", {}),
                               queue=node_queue("a"), task_id=task_id)
    with pytest.raises(DeadlineExceeded, match="started after its deadline"):
        late.get(timeout=60)
    assert set(states(node_a, sample).values()) == {"running"}
    assert lock.holder(lock_client(stack), sample.project) is None
    assert open_store(stack.store_url).list_checkpoints(sample.project) == []
