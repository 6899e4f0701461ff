"""Services that know nothing of podchord queue its tasks by name, with JSON arguments."""

from __future__ import annotations

import ast
import json
import re
import secrets
import subprocess
import sys

import pytest
from celery import Celery

from tests.cli_env import REPO
from workers.sample import container_exists, create_sample, read_counter, remove_sample

pytestmark = pytest.mark.podman

EXAMPLE = REPO / "examples" / "send_migration.py"


def test_example_imports_only_celery():
    tree = ast.parse(EXAMPLE.read_text())
    imported = {
        (n.module or "") if isinstance(n, ast.ImportFrom) else a.name
        for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)
        for a in n.names
    }
    assert {m.split(".")[0] for m in imported} <= {"json", "os", "sys", "celery"}, imported


def test_plain_celery_script_migrates_by_name(stack, testbed, node_a, node_b, tmp_path):
    project = f"s{secrets.token_hex(4)}"
    sample = create_sample(node_a, project, testbed.image)
    try:
        before = read_counter(node_a, sample.containers["db"])
        env = {
            "PATH": "/usr/bin:/bin",
            "BROKER_URL": stack.app.conf.broker_url,
            "RESULT_BACKEND": stack.app.conf.result_backend,
            "WAIT_S": "300",
        }
        # Run from an empty folder with a bare environment: no podchord settings at all.
        done = subprocess.run(
            [sys.executable, str(EXAMPLE), project, "a", "b", "240"], env=env, cwd=tmp_path,
            capture_output=True, text=True, timeout=400,
        )
        assert done.returncode == 0, done.stderr
        out = json.loads(done.stdout)
        value = out["result"]
        assert value["restore"]["node"] == "b"
        assert value["checkpoint"]["project"] == project
        assert value["checkpoint"]["mode"] == "eviction"
        assert value["checkpoint"]["checkpoint_id"] == value["restore"]["checkpoint_id"]
        for name in sample.containers.values():
            assert node_b.container_state(name) == "running", name
            assert not container_exists(node_a, name), name  # the source husk is removed
        assert read_counter(node_b, sample.containers["db"]) >= before
    finally:
        remove_sample(node_a, sample)
        remove_sample(node_b, sample)


@pytest.fixture
def bare_app(stack):
    """A client that is not podchord's: plain Celery, JSON, the stack's Redis."""
    app = Celery(broker=stack.app.conf.broker_url, backend=stack.app.conf.result_backend,
                 set_as_current=False)
    app.conf.update(task_serializer="json", accept_content=["json"])
    yield app
    app.close()


@pytest.mark.parametrize(
    ("name", "args", "message"),
    [
        ("podchord.checkpoint_project", ["proj", "a", {"bogus": 1}], "unknown option(s) ['bogus']"),
        ("podchord.checkpoint_project", ["proj", "a", {"leave_running": "yes"}],
         "option 'leave_running' must be true or false, got 'yes'"),
        ("podchord.checkpoint_project", ["Bad/Project", "a", {}], "invalid project name"),
        ("podchord.checkpoint_project", ["proj", "A", {}], "invalid node name 'A'"),
        ("podchord.checkpoint_project", ["proj", "b", {}], "reached the worker of node 'a'"),
        ("podchord.migrate", ["proj", "a", "../b", {}], "invalid node name '../b'"),
        ("podchord.migrate", ["proj", "a", "a", {}], "two different nodes"),
        ("podchord.restore_project", ["proj/nope", "a", {}], "invalid checkpoint id 'nope'"),
        ("podchord.restore_project", ["proj", "a", {"start_timeout_s": 0}], "start_timeout_s"),
        ("podchord.backup", ["proj", "a", 0, {}], "keep must be a whole number"),
        ("podchord.node_info", ["a", "bad image"], "invalid image reference"),
    ],
)
def test_bad_arguments_fail_at_the_task_boundary_with_a_clear_error(bare_app, name, args, message):
    result = bare_app.send_task(name, args=args, queue="podchord.node.a")
    # The rebuilt exception's class is podchord's own (importable here); match by name, as
    # a caller without podchord would.
    with pytest.raises(Exception, match=re.escape(message)) as info:
        result.get(timeout=60)
    assert type(info.value).__name__ == "InvalidInput", info.value


def test_prune_by_name_rejects_bad_grace(bare_app):
    result = bare_app.send_task("podchord.prune", args=["proj", 1, "soon"], queue="podchord")
    with pytest.raises(Exception, match="grace_s must be seconds"):
        result.get(timeout=60)
