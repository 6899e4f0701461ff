"""The `podchord` CLI as users run it: a real process, real workers, real store."""

from __future__ import annotations

import io
import json
import secrets
from pathlib import Path

import pytest

from tests.cli_env import podchord, stack_env
from workers.cli_output import ProgressLine
from workers.sample import create_sample, remove_sample

_SETTINGS = {
    "PODCHORD_BROKER_URL": "redis://127.0.0.1:1/0",
    "PODCHORD_STORE_URL": "file:///nonexistent-podchord-store",
}


def _one_error_line(done, code: int, *needles: str, progress: str | None = None) -> str:
    """Exactly one error line on stderr (after progress lines starting with ``progress``)."""
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    if progress is not None:
        lines = [line for line in lines if not line.startswith(progress)]
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["checkpoint", "--node", "a"], ["required: project"]),
        (["checkpoint", "../etc", "--node", "a"], ["invalid project name '../etc'"]),
        (["checkpoint", "p", "--node", "A"], ["invalid node name 'A'"]),
        (["checkpoint", "p", "--node", "a", "--deadline", "-1"], ["deadline_s must be in"]),
        (["migrate", "p", "--from", "a", "--to", "b/c"], ["invalid node name 'b/c'"]),
        (["restore", "p/2026", "--node", "a"], ["invalid checkpoint id '2026'"]),
        (["prune", "p", "--keep", "many"], ["invalid int value: 'many'"]),
        (["status", "--probe", "bad image"], ["invalid image reference"]),
        (["frobnicate"], ["invalid choice: 'frobnicate'"]),
        (["beat", "--schedule", "/nonexistent.toml"], ["schedule file", "does not exist"]),
        (["flower"], ["PODCHORD_FLOWER_BASIC_AUTH is not set"]),
    ],
)
def test_bad_arguments_exit_2_with_one_line(argv, needles, tmp_path):
    import os

    env = {**os.environ, **_SETTINGS}
    env.pop("PODCHORD_FLOWER_BASIC_AUTH", None)
    _one_error_line(podchord(*argv, env=env, timeout=60), 2, *needles)
    done = podchord(*argv, "--json", env=env, timeout=60)
    assert done.returncode == 2
    err = json.loads(done.stderr)["error"]
    assert err["exit_code"] == 2
    assert err["type"] in ("UsageError", "InvalidInput")
    assert needles[0] in err["message"]


def test_missing_settings_name_the_variable():
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("PODCHORD_")}
    _one_error_line(podchord("ls", "p", env=env, timeout=60), 2, "PODCHORD_BROKER_URL is not set")


def test_debug_prints_the_traceback():
    import os

    done = podchord("--debug", "checkpoint", "p", "--node", "A", env={**os.environ, **_SETTINGS})
    assert done.returncode == 2
    assert "Traceback" in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("podchord: error: InvalidInput")


class _Out(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def test_progress_refreshes_one_line_on_a_terminal_and_prints_lines_otherwise():
    tty = _Out(True)
    line = ProgressLine(tty)
    line.show("db 1 KiB uploading", "db uploading")
    line.show("db 2 KiB uploading", "db uploading")
    line.close()
    assert tty.getvalue() == "\rdb 1 KiB uploading\x1b[K\rdb 2 KiB uploading\x1b[K\n"
    plain = _Out(False)
    line = ProgressLine(plain, every_s=3600)
    line.show("db 1 KiB uploading", "db uploading")
    line.show("db 2 KiB uploading", "db uploading")  # only bytes moved: not repeated
    line.show("db 3 KiB stored", "db stored")
    line.close()
    assert plain.getvalue() == "db 1 KiB uploading\ndb 3 KiB stored\n"


@pytest.mark.podman
def test_json_outputs_hold_the_documented_fields(stack, testbed, node_a, node_b):
    env = stack_env(testbed, stack)
    project = f"c{secrets.token_hex(4)}"
    sample = create_sample(node_a, project, testbed.image)
    try:
        done = podchord("checkpoint", project, "--node", "a", "--leave-running", "--wait",
                        "--json", env=env)
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""  # --json: nothing but the document
        out = json.loads(done.stdout)
        assert out["task"] == "podchord.checkpoint_project"
        assert out["node"] == "a"
        assert out["state"] == "SUCCESS"
        assert out["task_id"]
        res = out["result"]
        assert res["project"] == project
        assert res["mode"] == "backup"
        assert sorted(res["services"]) == ["client", "db", "web"]
        assert res["bytes"] > 0
        assert res["manifest_key"].endswith("/manifest.json")
        first = res["checkpoint_id"]

        # Without --json and off a terminal: plain progress lines, a one-line summary.
        done = podchord("checkpoint", project, "--node", "a", "--leave-running", "--wait",
                        env=env)
        assert done.returncode == 0, done.stderr
        assert "\r" not in done.stderr
        assert all(line.startswith("checkpoint") for line in done.stderr.splitlines())
        for line in done.stderr.splitlines():
            if "[" in line:  # a per-service line names every service
                assert all(s in line for s in ("client", "db", "web")), line
        assert done.stdout.startswith(f"committed {project}/")

        done = podchord("ls", project, "--json", env=env)
        rows = json.loads(done.stdout)
        assert len(rows) == 2
        assert rows[1]["checkpoint_id"] == first  # newest first
        for row in rows:
            assert row["committed"] is True
            assert row["project"] == project
            assert row["size_bytes"] > 0
            assert set(row) >= {"checkpoint_id", "created", "object_count", "open_uploads"}

        done = podchord("show", f"{project}/{first}", "--json", env=env)
        manifest = json.loads(done.stdout)
        assert manifest["checkpoint_id"] == first
        assert manifest["source"]["node"] == "a"
        assert {s["name"] for s in manifest["services"]} == {"client", "db", "web"}
        text = podchord("show", project, env=env).stdout
        assert text.startswith(f"checkpoint {project}/{rows[0]['checkpoint_id']}")
        assert "service db:" in text

        done = podchord("prune", project, "--keep", "1", "--json", env=env)
        report = json.loads(done.stdout)
        assert report["kept"] == [rows[0]["checkpoint_id"]]
        assert report["deleted"] == [first]

        # A failing operation: exit 1, one line naming what failed.
        done = podchord("checkpoint", "nosuchproject", "--node", "a", "--wait", env=env)
        _one_error_line(done, 1, "ProjectError", "no containers", progress="checkpoint")
        done = podchord("checkpoint", "nosuchproject", "--node", "a", "--json", env=env)
        queued = json.loads(done.stdout)
        assert queued["task"] == "podchord.checkpoint_project"
        assert queued["task_id"]
    finally:
        remove_sample(node_a, sample)
        remove_sample(node_b, sample)


@pytest.mark.podman
def test_status_reports_nodes_and_check_exit_codes(stack, testbed):
    env = stack_env(testbed, stack)
    done = podchord("status", "--json", "--check", "--probe", testbed.image, env=env)
    assert done.returncode == 0, (done.stdout, done.stderr)
    status = json.loads(done.stdout)
    assert status["healthy"] is True
    assert set(status["nodes"]) == set(testbed.nodes)
    for name, node in status["nodes"].items():
        assert node["ok"] is True, node
        assert node["workers"]
        assert node["workers"][0].startswith(f"{name}@")
        report = node["report"]
        assert report["node"] == name
        assert report["podman_version"]
        assert report["oci_runtime"] == "runc"
        assert report["probe"]["ok"] is True
        assert report["checkpoint_ready"] is True
    queues = {w["node"]: w["queues"] for w in status["workers"]}
    assert queues["a"] == ["podchord", "podchord.node.a"]

    done = podchord("status", "--check", "--node", "a", "--node", "nowhere", "--timeout", "1",
                    env=env)
    assert done.returncode == 3, done.stdout
    assert "node nowhere: UNHEALTHY" in done.stdout
    assert "no live worker consumes podchord.node.nowhere" in done.stdout
    # Without --check: just a report.
    done = podchord("status", "--node", "nowhere", "--timeout", "1", env=env)
    assert done.returncode == 0
    done = podchord("status", "--check", "--workers-only", "--json", "--timeout", "1", env=env)
    assert done.returncode == 0, done.stderr
    light = json.loads(done.stdout)
    assert light["nodes"] == {}
    assert {w["node"] for w in light["workers"]} == set(testbed.nodes)


def test_worker_processes_run_with_a_fixed_malloc_mmap_threshold(stack):
    # `podchord worker` sets it before exec'ing Celery (workers/cli_procs.py): the main
    # process and every prefork child (forked from it) must carry it.
    main = stack.workers["a"].proc.pid
    children = [
        int(pid)
        for task in Path(f"/proc/{main}/task").iterdir()
        for pid in (task / "children").read_text().split()
    ]
    assert children, "the worker has no prefork children"
    for pid in [main, *children]:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert b"MALLOC_MMAP_THRESHOLD_=4194304" in environ, pid
