"""Flower, started by `podchord flower` as a real process, watching a real migration."""

from __future__ import annotations

import base64
import json
import os
import secrets
import urllib.error
import urllib.request

import pytest

from tasks import api
from tests.cli_env import free_port, podchord, stack_env, start, stop, wait_for
from workers.sample import create_sample, remove_sample

pytestmark = pytest.mark.podman

_USER, _PASSWORD = "ops", f"pw-{secrets.token_hex(8)}"


def _get(url: str, auth: tuple[str, str] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url)
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, b""


@pytest.fixture
def flower(stack, testbed, tmp_path):
    port = free_port()
    log = tmp_path / "flower.log"
    env = stack_env(testbed, stack, PODCHORD_FLOWER_BASIC_AUTH=f"{_USER}:{_PASSWORD}")
    proc = start(["flower", "--address", "127.0.0.1", "--port", str(port)], env, log)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for("Flower to answer", lambda: _get(f"{base}/healthcheck")[0] == 200, 60,
                 proc=proc, log=log)

        def sees_worker_events() -> bool:  # its event receiver is connected
            status, body = _get(f"{base}/metrics")
            return status == 200 and b'flower_worker_online{worker="a@' in body

        wait_for("Flower to receive worker events", sees_worker_events, 60, proc=proc, log=log)
        yield base
    finally:
        stop(proc)
    assert _PASSWORD not in log.read_text()


def test_flower_lists_a_migrations_tasks_and_refuses_anonymous_calls(
    stack, testbed, node_a, node_b, flower
):
    status, _ = _get(f"{flower}/api/tasks")
    assert status == 401
    status, _ = _get(f"{flower}/api/tasks", auth=(_USER, "wrong"))
    assert status == 401

    project = f"f{secrets.token_hex(4)}"
    sample = create_sample(node_a, project, testbed.image)
    try:
        result = api.migrate(stack.app, project, "a", "b", {"deadline_s": 240})
        value = result.get(timeout=300)
        cid = value["checkpoint"]["checkpoint_id"]
        want = {
            "podchord.migrate": 1, "podchord.checkpoint_service": 3,
            "podchord.commit_manifest": 1, "podchord.restore_after_checkpoint": 1,
        }

        seen: list[tuple[str, str, str]] = []

        def migration_tasks():
            status, body = _get(f"{flower}/api/tasks?limit=1000", auth=(_USER, _PASSWORD))
            assert status == 200
            tasks = json.loads(body)
            # The migration's tasks: its own id, and the tasks whose args name the checkpoint.
            # The deadline watchdog (eta: the deadline) waits on the shared queue by design.
            mine = [t for t in tasks.values()
                    if (t["uuid"] == result.id or cid in (t.get("args") or ""))
                    and t["name"] != "podchord.checkpoint_deadline"]
            names = [t["name"] for t in mine]
            seen[:] = sorted((t["name"], t["state"], t["uuid"]) for t in mine)
            if all(names.count(n) >= k for n, k in want.items()) and all(
                t["state"] in ("SUCCESS", "FAILURE") for t in mine
            ):
                return mine
            return None

        try:
            mine = wait_for("Flower to show the migration's final states", migration_tasks, 60)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; Flower shows {seen}") from None
        by_name: dict[str, list[dict]] = {}
        for t in mine:
            by_name.setdefault(t["name"], []).append(t)
        assert {t["state"] for t in mine} == {"SUCCESS"}, [(t["name"], t["state"]) for t in mine]
        # task_send_sent_event: every one of them was seen when sent, not only when received.
        assert all(t["sent"] for t in mine), [(t["name"], t["sent"]) for t in mine]
        outer = by_name["podchord.migrate"][0]
        assert outer["uuid"] == result.id
        assert project in outer["args"]
        assert cid in outer["result"]  # the final state sent for the outer id
        services = {t["args"] for t in by_name["podchord.checkpoint_service"]}
        assert services == {f"('{project}/{cid}', '{s}')" for s in ("client", "db", "web")}
        assert by_name["podchord.restore_after_checkpoint"][0]["worker"].startswith("b@")
        # No secrets in what Flower shows: neither the store's nor Flower's credentials.
        shown = json.dumps(mine)
        for name, val in os.environ.items():
            if any(w in name for w in ("SECRET", "PASSWORD", "TOKEN")) and len(val) >= 4:
                assert val not in shown, name
        assert _PASSWORD not in shown
    finally:
        remove_sample(node_a, sample)
        remove_sample(node_b, sample)


def test_flower_metrics_are_prometheus_text(flower):
    status, body = _get(f"{flower}/metrics")
    assert status == 200
    assert b"# TYPE flower_events_total counter" in body


def test_flower_without_credentials_refuses_to_start(stack, testbed):
    env = stack_env(testbed, stack)
    env.pop("PODCHORD_FLOWER_BASIC_AUTH", None)
    done = podchord("flower", "--port", str(free_port()), env=env, timeout=60)
    assert done.returncode == 2
    assert "PODCHORD_FLOWER_BASIC_AUTH is not set" in done.stderr
    env["PODCHORD_FLOWER_BASIC_AUTH"] = "no-colon-here"
    done = podchord("flower", env=env, timeout=60)
    assert done.returncode == 2
    assert "user:password" in done.stderr
