"""``podchord checkpoint|restore|migrate``: queue the task by name, optionally wait for it."""

from __future__ import annotations

import argparse
import time
from typing import Any

from celery import Celery
from celery.result import AsyncResult

from tasks import api
from tasks.errors import PodchordError
from tasks.keys import check_checkpoint_id
from tasks.names import check_node, check_project

from .cli_output import ProgressLine, emit, human_bytes

__all__ = ["run_task_command"]

_POLL_S = 0.5


def run_task_command(app: Celery, args: argparse.Namespace) -> int:
    """Queue the command's task; with ``--wait`` show progress and print its result."""
    if args.command == "checkpoint":
        opts: dict[str, Any] = {"leave_running": args.leave_running, "compress": args.compress}
        if args.deadline is not None:
            opts["deadline_s"] = args.deadline
        result = api.checkpoint(app, check_project(args.project), check_node(args.node), opts)
        name, node = "podchord.checkpoint_project", args.node
    elif args.command == "restore":
        _check_ref(args.checkpoint)
        opts = {"ignore_volumes": args.ignore_volumes, "force_cpu": args.force_cpu}
        result = api.restore(app, args.checkpoint, check_node(args.node), opts)
        name, node = "podchord.restore_project", args.node
    else:
        opts = {"compress": args.compress, "force_cpu": args.force_cpu}
        if args.deadline is not None:
            opts["deadline_s"] = args.deadline
        result = api.migrate(
            app, check_project(args.project), check_node(args.source), check_node(args.target),
            opts,
        )
        name, node = "podchord.migrate", args.source
    head = {"task_id": result.id, "task": name, "node": node}
    if not args.wait:
        emit(args.json, head, f"queued {name} on node {node}: task {result.id}")
        return 0
    value = wait_with_progress(app, result, args.timeout, ProgressLine(enabled=not args.json),
                               label=args.command)
    emit(args.json, {**head, "state": "SUCCESS", "result": value}, _summary(name, value))
    return 0


def _check_ref(ref: str) -> None:
    project, _, checkpoint_id = ref.partition("/")
    check_project(project)
    if checkpoint_id:
        check_checkpoint_id(checkpoint_id)


def wait_with_progress(
    app: Celery, result: AsyncResult, timeout_s: float, line: ProgressLine, *, label: str
) -> Any:
    """Poll ``result`` until it is ready, showing per-service progress on ``line``.

    Raises:
        PodchordError: timed out (the task goes on).
        Whatever the task failed with (rebuilt by Celery).
    """
    deadline = time.monotonic() + timeout_s
    try:
        while not result.ready():
            if time.monotonic() > deadline:
                raise PodchordError(
                    f"timed out after {timeout_s:g}s waiting for task {result.id} "
                    "(it goes on; its result stays in the result backend)"
                )
            text, shape = describe_progress(app, result, label)
            line.show(text, shape)
            time.sleep(_POLL_S)
    finally:
        line.close()
    return result.get(propagate=True, disable_sync_subtasks=False)


def describe_progress(app: Celery, result: AsyncResult, label: str) -> tuple[str, str]:
    """One line about a running task: its phase and each service's bytes and state.

    Returns:
        (text, shape): the line, and the line without byte counts.
    """
    state = result.state
    info = result.info if state == "PROGRESS" and isinstance(result.info, dict) else {}
    if not info:
        text = f"{label}: {state.lower()}"
        return text, text
    services = info.get("services")
    if not isinstance(services, dict):
        text = f"{label}: {info.get('phase', state.lower())}"
        return text, text
    parts, shapes, done = [], [], 0
    for service, task_id in sorted(services.items()):
        child = AsyncResult(task_id, app=app)
        cstate, cinfo = child.state, child.info
        if cstate == "SUCCESS" and isinstance(cinfo, dict):
            done += 1
            size = int((cinfo.get("archive") or {}).get("size_bytes", 0))
            parts.append(f"{service} {human_bytes(size)} stored")
            shapes.append(f"{service} stored")
        elif cstate == "PROGRESS" and isinstance(cinfo, dict):
            parts.append(f"{service} {human_bytes(int(cinfo.get('bytes', 0)))} uploading")
            shapes.append(f"{service} uploading")
        else:
            word = {"PENDING": "queued", "STARTED": "dumping"}.get(cstate, cstate.lower())
            parts.append(f"{service} {word}")
            shapes.append(parts[-1])
    phase = "checkpoint"
    if done == len(services):
        phase = "restore" if label == "migrate" else "commit"
    head = f"{label} {info.get('checkpoint_id', '')} [{phase}]"
    return f"{head} " + ", ".join(parts), f"{head} " + ", ".join(shapes)


def _summary(name: str, value: Any) -> str:
    if not isinstance(value, dict):
        return str(value)
    if name == "podchord.checkpoint_project":
        return (
            f"committed {value['project']}/{value['checkpoint_id']} "
            f"({len(value['services'])} services, {human_bytes(value['bytes'])})"
        )
    if name == "podchord.restore_project":
        return f"restored {value['project']}/{value['checkpoint_id']} on {value['node']}"
    ck, rs = value["checkpoint"], value["restore"]
    return (
        f"migrated {ck['project']} {ck['node']} -> {rs['node']} "
        f"(checkpoint {ck['checkpoint_id']}, services {', '.join(sorted(rs['services']))})"
    )
