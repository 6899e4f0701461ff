"""Scheduled backups: the schedule file, and a real `celery beat` against the real stack."""

from __future__ import annotations

import secrets
import tomllib

import pytest
import redis

from tasks.errors import InvalidInput
from tasks.store import open_store
from tests.cli_env import quiet, stack_env, start, stop, wait_for
from workers.sample import create_sample, remove_sample
from workers.schedule import beat_schedule, parse_schedule


def _parse(text: str):
    return parse_schedule(tomllib.loads(text))


def test_entries_become_expiring_backups_on_the_node_queue():
    entries = _parse(
        """
        [[backup]]
        project = "shop"
        node = "a"
        interval_s = 600
        keep = 3
        deadline_s = 120

        [[backup]]
        name = "nightly"
        project = "shop"
        node = "b"
        crontab = "30 2 * * *"
        keep = 7
        compress = true
        """
    )
    sched = beat_schedule(entries)
    hourly = sched["backup:shop@a"]
    assert hourly["task"] == "podchord.backup"
    assert hourly["args"] == ("shop", "a", 3, {"compress": False, "deadline_s": 120.0})
    assert hourly["options"] == {"queue": "podchord.node.a", "expires": 120.0}
    assert hourly["schedule"].run_every.total_seconds() == 600
    nightly = sched["nightly"]
    assert nightly["options"] == {"queue": "podchord.node.b", "expires": 300.0}
    assert nightly["args"] == ("shop", "b", 7, {"compress": True})
    assert nightly["schedule"].hour == {2}
    assert nightly["schedule"].minute == {30}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no [[backup]] entries"),
        ('[[backup]]\nproject="p"\nnode="a"\nkeep=1\n', "exactly one of interval_s and crontab"),
        ('[[backup]]\nproject="p"\nnode="a"\nkeep=1\ninterval_s=5\ncrontab="* * * * *"\n',
         "exactly one of"),
        ('[[backup]]\nproject="p"\nnode="a"\nkeep=1\ninterval_s=5\nkeepp=2\n',
         "backup #1: unknown key(s) ['keepp']"),
        ('[[backup]]\nproject="P!"\nnode="a"\nkeep=1\ninterval_s=5\n', "invalid project name"),
        ('[[backup]]\nproject="p"\nnode="a b"\nkeep=1\ninterval_s=5\n', "invalid node name"),
        ('[[backup]]\nproject="p"\nnode="a"\nkeep=0\ninterval_s=5\n', "keep must be"),
        ('[[backup]]\nproject="p"\nnode="a"\nkeep=1\ninterval_s=-5\n', "interval_s must be"),
        ('[[backup]]\nproject="p"\nnode="a"\nkeep=1\ncrontab="61 * * * *"\n', "crontab"),
        ('[[backup]]\nproject="p"\nnode="a"\nkeep=1\ncrontab="* * *"\n', "5 fields"),
        ('[[backup]]\nnode="a"\nkeep=1\ninterval_s=5\n', "'project' is missing"),
        ('[[backup]]\nproject="p"\nnode="a"\nkeep=1\ninterval_s=5\ndeadline_s=1e9\n',
         "deadline_s must be in"),
        ('[[backups]]\nproject="p"\n', "unknown table(s) ['backups']"),
    ],
)
def test_bad_schedules_are_refused_naming_the_entry(text, message):
    with pytest.raises(InvalidInput) as info:
        _parse(text)
    assert message in str(info.value)


def _schedule(tmp_path, project: str, interval_s: int, keep: int):
    path = tmp_path / "schedule.toml"
    path.write_text(
        f'[[backup]]\nproject = "{project}"\nnode = "a"\ninterval_s = {interval_s}\n'
        f"keep = {keep}\ndeadline_s = 120\n"
    )
    return path


@pytest.mark.podman
def test_beat_takes_backups_and_retention_keeps_exactly_n(stack, testbed, node_a, tmp_path):
    keep, runs = 2, 3  # one more than kept: retention must have deleted one
    project = f"bt{secrets.token_hex(3)}"
    sample = create_sample(node_a, project, testbed.image)
    store = open_store(stack.store_url)
    log = tmp_path / "beat.log"
    beat = start(
        ["beat", "--schedule", str(_schedule(tmp_path, project, 4, keep)),
         "--schedule-db", str(tmp_path / "beat-db"), "--loglevel", "INFO"],
        stack_env(testbed, stack), log,
    )
    seen: set[str] = set()
    try:
        def enough() -> bool:
            seen.update(e.checkpoint_id for e in store.list_checkpoints(project) if e.committed)
            return len(seen) >= runs

        wait_for(f"{runs} committed backups", enough, timeout_s=300, every_s=1.0,
                 proc=beat, log=log)
    finally:
        stop(beat)
    try:
        # Backups that beat sent before it stopped finish, each followed by its prune.
        quiet(stack)
        entries = store.list_checkpoints(project)
        seen.update(e.checkpoint_id for e in entries if e.committed)
        assert all(e.committed for e in entries), entries
        assert [e.checkpoint_id for e in entries] == sorted(seen, reverse=True)[:keep]
        for e in entries:
            manifest = store.read_manifest(project, e.checkpoint_id)
            assert b'"mode": "backup"' in manifest
        for name in sample.containers.values():  # backups leave the project running
            assert node_a.container_state(name) == "running"
        assert "podchord.backup" in log.read_text()
    finally:
        remove_sample(node_a, sample)


@pytest.mark.podman
def test_beat_runs_with_redbeat_holding_its_lock_in_redis(stack, testbed, node_a, tmp_path):
    pytest.importorskip("redbeat", reason="celery-redbeat is an optional extra")
    project = f"rb{secrets.token_hex(3)}"
    sample = create_sample(node_a, project, testbed.image)
    store = open_store(stack.store_url)
    log = tmp_path / "redbeat.log"
    schedule = _schedule(tmp_path, project, 3, 1)
    schedule.write_text(schedule.read_text() + "expires_s = 120\n")
    broker = redis.Redis.from_url(stack.app.conf.broker_url)
    beat = start(["beat", "--schedule", str(schedule), "--scheduler", "redbeat"],
                 stack_env(testbed, stack), log)
    sent = f"Sending due task backup:{project}@a (podchord.backup)"
    try:
        wait_for("redbeat to send a backup", lambda: sent in log.read_text(), 120, 0.5, beat, log)
        # redbeat's own key scheme under podchord's prefix: the leader lock, the schedule.
        assert broker.exists("podchord:redbeat::lock")
        entry = f"podchord:redbeat:backup:{project}@a"
        assert broker.zscore("podchord:redbeat::schedule", entry) is not None
        # Beat keeps running until a backup committed: stopped right after logging "Sending
        # due task", it may die before publishing it (a CI run once waited 240 s in vain).
        try:
            wait_for("a backup redbeat sent to commit", lambda: any(
                e.committed for e in store.list_checkpoints(project)), 240, 1.0, beat, log)
        except AssertionError as err:
            raise AssertionError(f"{err}\n{_worker_lines(stack, 'a', project)}") from None
    finally:
        stop(beat)
        broker.close()
    try:
        quiet(stack)  # the backups sent meanwhile finish (or were refused by the lock)
        assert any(e.committed for e in store.list_checkpoints(project))
    finally:
        remove_sample(node_a, sample)


def _worker_lines(stack, node: str, project: str) -> str:
    """What the node's worker logged about ``project`` (for a failure's message)."""
    lines = stack.workers[node].log.read_text(errors="replace").splitlines()
    return "\n".join(line for line in lines if project in line or "Error" in line)[-6000:]
