"""Bad task arguments, sent by name as another service would: a clear error, nothing changed."""

from __future__ import annotations

import math
import secrets

import pytest

from tasks import api, lock
from tasks.errors import InvalidInput
from tasks.jobs import node_queue
from tasks.libpod import Libpod
from tests.faults.conftest import states
from tests.stack import objects_under
from workers.sample import create_sample, remove_sample

pytestmark = pytest.mark.podman

BAD_NAMES = ["a/b", "../etc", "a b", "a\nb", "a\x00b", "", "a" * 70]


def send(stack, name: str, args: tuple, node: str = "a"):
    return stack.app.send_task(name, args=args, queue=node_queue(node))


def assert_refused(result, match: str) -> InvalidInput:
    with pytest.raises(InvalidInput, match=match) as info:
        result.get(timeout=60)
    return info.value


@pytest.fixture(scope="module")
def module_sample(stack, testbed):
    """One sample project on node a for the whole module (refusals must not touch it)."""
    with Libpod.from_socket(testbed.socket("a")) as a:
        made = create_sample(a, f"f{secrets.token_hex(4)}", testbed.image)
        yield made
        remove_sample(a, made)


@pytest.fixture
def untouched(stack, testbed, module_sample, node_a):
    """After the test: the sample still runs, the store holds nothing of it, no lock."""
    sample = module_sample
    yield sample
    assert set(states(node_a, sample).values()) == {"running"}, states(node_a, sample)
    assert objects_under(testbed, stack.bucket, f"pc/projects/{sample.project}/") == []
    assert lock.holder(stack.app.backend.client, sample.project) is None


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_bad_project_names(stack, untouched, name):
    for task, args in (
        ("podchord.checkpoint_project", (name, "a", {})),
        ("podchord.migrate", (name, "a", "b", {})),
        ("podchord.prune", (name, 1)),
    ):
        exc = assert_refused(send(stack, task, args), "project name")
        assert repr(name)[1:-1][:20] in str(exc), (task, str(exc))
    # A restore reference is PROJECT[/CHECKPOINT_ID]: "a/b" fails on its checkpoint id.
    assert_refused(send(stack, "podchord.restore_project", (name, "a", {})), "invalid")


@pytest.mark.parametrize("node", ["a/b", "..", "a\nb", "A"], ids=repr)
def test_bad_node_names(stack, untouched, node):
    p = untouched.project
    assert_refused(send(stack, "podchord.checkpoint_project", (p, node, {})), "node name")
    assert_refused(send(stack, "podchord.migrate", (p, "a", node, {})), "node name")
    with pytest.raises(InvalidInput, match="node name"):
        api.restore(stack.app, p, node)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"bogus": 1}, "unknown option"),
        ({"leave_running": "yes"}, "'leave_running' must be true or false"),
        ({"leave_running": 1}, "'leave_running' must be true or false"),
        ({"deadline_s": "10"}, "'deadline_s' must be"),
        ({"deadline_s": True}, "'deadline_s' must be"),
        ({"deadline_s": -1}, "deadline_s must be in"),
        ({"deadline_s": 1e9}, "deadline_s must be in"),
        ({"deadline_s": math.nan}, "deadline_s must be in"),
        ({"deadline_s": math.inf}, "deadline_s must be in"),
        ("leave_running", "options must be a JSON object"),
        ([["leave_running", True]], "options must be a JSON object"),
    ],
    ids=repr,
)
def test_bad_checkpoint_and_migrate_options(stack, untouched, options, match):
    p = untouched.project
    assert_refused(send(stack, "podchord.checkpoint_project", (p, "a", options)), match)
    if isinstance(options, dict) and "leave_running" in options:
        options = {"tcp_established": options["leave_running"]}
        match = match.replace("leave_running", "tcp_established")
    assert_refused(send(stack, "podchord.migrate", (p, "a", "b", options)), match)


@pytest.mark.parametrize(
    "args",
    [
        (123, "a", {}),
        (None, "a", {}),
        (["p"], "a", {}),
        ({"project": "p"}, "a", {}),
    ],
    ids=repr,
)
def test_wrong_argument_types(stack, untouched, args):
    assert_refused(send(stack, "podchord.checkpoint_project", args), "must be a string")
    assert_refused(send(stack, "podchord.restore_project", args), "must be a string")
    assert_refused(send(stack, "podchord.migrate", (args[0], "a", "b", {})), "must be a string")


def test_bad_restore_and_prune_arguments(stack, untouched):
    p = untouched.project
    for options, match in (
        ({"start_timeout_s": "60"}, "start_timeout_s"),
        ({"start_timeout_s": 0}, "start_timeout_s"),
        ({"ignore_volumes": "no"}, "ignore_volumes"),
        ({"leave_running": True}, "unknown option"),
    ):
        assert_refused(send(stack, "podchord.restore_project", (p, "a", options)), match)
    for ref in (f"{p}/../x", f"{p}/not-an-id", f"{p}/20261204T154012123Z-3f9a1c0b/x"):
        assert_refused(send(stack, "podchord.restore_project", (ref, "a", {})), "invalid")
    for keep in (0, -1, "3", 1.5, True):
        assert_refused(send(stack, "podchord.prune", (p, keep)), "keep must be")


def test_task_for_another_node_is_refused_by_the_wrong_worker(stack, untouched):
    # Routed to a's queue but naming b: a's worker must not touch a's Podman for it.
    p = untouched.project
    assert_refused(
        send(stack, "podchord.checkpoint_project", (p, "b", {}), node="a"),
        "reached the worker of node 'a'",
    )


def test_unknown_node_is_refused_before_anything_is_queued_or_stopped(stack, untouched):
    p = untouched.project
    with pytest.raises(InvalidInput, match="unknown node 'zz'"):
        api.restore(stack.app, p, "zz")
    with pytest.raises(InvalidInput, match="unknown node 'zz'"):
        api.checkpoint(stack.app, p, "zz")
    with pytest.raises(InvalidInput, match="unknown node 'zz'"):
        api.migrate(stack.app, p, "zz", "a")
    # Sent by name, as another service would: the source worker refuses a dead target
    # before it evicts anything (an evicted workload needs somewhere to go).
    assert_refused(send(stack, "podchord.migrate", (p, "a", "zz", {})), "unknown node 'zz'")
    assert_refused(
        send(stack, "podchord.migrate", (p, "a", "zz", {"deadline_s": 30})), "unknown node 'zz'"
    )
