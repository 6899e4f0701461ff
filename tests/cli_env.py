"""Helpers for tests that run podchord's own processes (CLI, beat, Flower) on the stack."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def stack_env(testbed, stack, **extra: str) -> dict[str, str]:
    """The environment a podchord process needs to talk to this session's stack."""
    return {
        **os.environ,
        **testbed.env,
        "PODCHORD_BROKER_URL": stack.app.conf.broker_url,
        "PODCHORD_RESULT_BACKEND": stack.app.conf.result_backend,
        "PODCHORD_STORE_URL": stack.store_url,
        **extra,
    }


def podchord(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the ``podchord`` CLI (as the console script would) and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "workers.cli", *args], env=env, cwd=REPO,
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start a long-running podchord command in its own session, output to ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "workers.cli", *args], env=env, cwd=REPO,
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def stop(proc: subprocess.Popen, timeout_s: float = 20) -> None:
    """Stop a process started by :func:`start` (its own process group), by its pid."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, check: Callable[[], Any], timeout_s: float, every_s: float = 0.5,
             proc: subprocess.Popen | None = None, log: Path | None = None) -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` otherwise."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log else ""
            raise AssertionError(f"{what}: process exited ({proc.returncode}):\n{tail}")
        value = check()
        if value:
            return value
        time.sleep(every_s)
    tail = log.read_text()[-3000:] if log else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


def quiet(stack, settle_s: float = 2.0, timeout_s: float = 180) -> None:
    """Wait until no worker of the stack runs or holds a task, twice in a row."""

    def idle() -> bool:
        insp = stack.app.control.inspect(timeout=1.0)
        busy = [
            t for part in (insp.active(), insp.reserved(), insp.scheduled())
            for tasks in (part or {}).values() for t in tasks
            # the deadline watchdogs of other tests wait on the shared queue: not ours
            if t.get("name", (t.get("request") or {}).get("name")) != "podchord.checkpoint_deadline"
        ]
        return not busy

    deadline = time.monotonic() + timeout_s
    calm = 0
    while calm < 2:
        if time.monotonic() > deadline:
            raise AssertionError("the stack's workers did not become idle")
        calm = calm + 1 if idle() else 0
        time.sleep(settle_s)
