"""``podchord``: a thin CLI that parses flags and delegates to Celery and the task library.

Exit codes: 0 success; 1 the operation failed (the message says why); 2 bad arguments or
settings; 3 ``status --check`` found a node unhealthy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Sequence
from typing import Any

from tasks.errors import InvalidInput, PodchordError
from tasks.jobs import SHARED_QUEUE, node_queue
from tasks.names import check_node, check_project

__all__ = ["main"]

EXIT_FAILED, EXIT_USAGE, EXIT_UNHEALTHY = 1, 2, 3


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="podchord", description=__doc__)
    p.add_argument("--debug", action="store_true", help="print tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    w = sub.add_parser("worker", help="run a Celery worker for one node")
    w.add_argument("--node", required=True)
    w.add_argument("--podman-socket", required=True)
    w.add_argument("--concurrency", type=int, default=6)
    w.add_argument("--loglevel", default="INFO")

    c = sub.add_parser("checkpoint", help="checkpoint a project")
    c.add_argument("project")
    c.add_argument("--node", required=True)
    c.add_argument("--leave-running", action="store_true", help="backup mode")
    c.add_argument("--compress", action="store_true")
    c.add_argument("--deadline", type=float, metavar="SECONDS")

    r = sub.add_parser("restore", help="restore a checkpoint (PROJECT[/CHECKPOINT_ID])")
    r.add_argument("checkpoint")
    r.add_argument("--node", required=True)
    r.add_argument("--ignore-volumes", action="store_true")
    r.add_argument("--force-cpu", action="store_true")

    m = sub.add_parser("migrate", help="checkpoint on one node, restore on another")
    m.add_argument("project")
    m.add_argument("--from", dest="source", required=True)
    m.add_argument("--to", dest="target", required=True)
    m.add_argument("--deadline", type=float, metavar="SECONDS")
    m.add_argument("--compress", action="store_true")

    ls = sub.add_parser("ls", help="list a project's checkpoints, newest first")
    ls.add_argument("project")
    sh = sub.add_parser("show", help="print a checkpoint's manifest")
    sh.add_argument("checkpoint")
    pr = sub.add_parser("prune", help="keep the newest N committed checkpoints")
    pr.add_argument("project")
    pr.add_argument("--keep", type=int, required=True)
    pr.add_argument("--grace", type=float, default=3600.0, metavar="SECONDS")

    for sp in (c, r, m):
        sp.add_argument("--wait", action="store_true", help="wait for the result")
        sp.add_argument("--timeout", type=float, default=3600.0, metavar="SECONDS")
    for sp in (c, r, m, ls, sh, pr):
        sp.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``podchord`` console script."""
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except InvalidInput as exc:
        _fail(args, exc)
        return EXIT_USAGE
    except PodchordError as exc:
        _fail(args, exc)
        return EXIT_FAILED
    except Exception as exc:  # a remote task's failure arrives as whatever Celery rebuilt
        _fail(args, exc)
        return EXIT_FAILED


def _fail(args: argparse.Namespace, exc: BaseException) -> None:
    if args.debug:
        traceback.print_exception(exc)
    print(f"podchord: error: {type(exc).__name__}: {exc}", file=sys.stderr)


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "worker":
        return _worker(args)
    if args.command in ("ls", "show", "prune"):
        return _store_command(args)
    return _task_command(args)


def _worker(args: argparse.Namespace) -> int:
    node = check_node(args.node)
    env = dict(os.environ, PODCHORD_NODE=node, PODCHORD_PODMAN_SOCKET=args.podman_socket)
    from tasks.settings import Settings

    Settings.from_env(env)  # fail here, with the variable's name, not inside Celery
    argv = [
        sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker",
        "-Q", f"{SHARED_QUEUE},{node_queue(node)}", "-n", f"{node}@%h",
        "--concurrency", str(args.concurrency), "--loglevel", args.loglevel, "-E",
    ]
    os.execvpe(sys.executable, argv, env)
    return 0  # not reached


def _task_command(args: argparse.Namespace) -> int:
    from workers.app import create_app

    app = create_app()
    targs: tuple[Any, ...]
    if args.command == "checkpoint":
        opts: dict[str, Any] = {"leave_running": args.leave_running, "compress": args.compress}
        if args.deadline is not None:
            opts["deadline_s"] = args.deadline
        name, targs = "podchord.checkpoint_project", (check_project(args.project), args.node, opts)
        queue = node_queue(args.node)
    elif args.command == "restore":
        opts = {"ignore_volumes": args.ignore_volumes, "force_cpu": args.force_cpu}
        name, targs = "podchord.restore_project", (args.checkpoint, args.node, opts)
        queue = node_queue(args.node)
    else:
        opts = {"compress": args.compress}
        if args.deadline is not None:
            opts["deadline_s"] = args.deadline
        name = "podchord.migrate"
        targs = (check_project(args.project), check_node(args.source), args.target, opts)
        queue = node_queue(args.source)
    result = app.send_task(name, args=targs, queue=queue)
    if not args.wait:
        _emit(args, {"task_id": result.id, "task": name}, f"queued {name}: {result.id}")
        return 0
    value = _wait(result, args)
    _emit(args, {"task_id": result.id, "task": name, "result": value}, _summary(name, value))
    return 0


def _wait(result: Any, args: argparse.Namespace) -> Any:
    """Poll the result, showing progress on stderr, until it is ready."""
    deadline = time.monotonic() + args.timeout
    last = None
    tty = sys.stderr.isatty()
    while not result.ready():
        if time.monotonic() > deadline:
            raise PodchordError(f"timed out after {args.timeout}s waiting for {result.id}")
        info = result.info if result.state == "PROGRESS" else None
        line = f"{result.state} {json.dumps(info) if info else ''}".strip()
        if line != last and not args.json:
            print(("\r" if tty else "") + line, file=sys.stderr, end="" if tty else "\n")
            last = line
        time.sleep(0.5)
    if tty and last and not args.json:
        print(file=sys.stderr)
    return result.get(propagate=True, disable_sync_subtasks=False)


def _summary(name: str, value: Any) -> str:
    if not isinstance(value, dict):
        return str(value)
    if name == "podchord.checkpoint_project":
        return f"committed {value['project']}/{value['checkpoint_id']} ({value['manifest_key']})"
    if name == "podchord.restore_project":
        return f"restored {value['project']}/{value['checkpoint_id']} on {value['node']}"
    ck, rs = value["checkpoint"], value["restore"]
    return (
        f"migrated {ck['project']} {ck['node']} -> {rs['node']} "
        f"(checkpoint {ck['checkpoint_id']}, services {', '.join(rs['services'])})"
    )


def _store_command(args: argparse.Namespace) -> int:
    from tasks.jobs import _jsonable
    from tasks.restore import load_manifest
    from tasks.runtime import runtime

    store = runtime().store()
    if args.command == "ls":
        rows = [_jsonable(e) for e in store.list_checkpoints(check_project(args.project))]
        text = "\n".join(
            f"{r['checkpoint_id']}  {'committed' if r['committed'] else 'UNCOMMITTED'}  "
            f"{r['size_bytes']} bytes" for r in rows
        ) or f"no checkpoints of {args.project}"
        _emit(args, rows, text)
    elif args.command == "show":
        manifest = load_manifest(store, args.checkpoint).to_json()
        _emit(args, manifest, json.dumps(manifest, indent=2, sort_keys=True))
    else:
        report = _jsonable(
            store.prune(check_project(args.project), keep=args.keep, grace_s=args.grace)
        )
        _emit(args, report, json.dumps(report, indent=2))
    return 0


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, sort_keys=True) if getattr(args, "json", False) else text)


if __name__ == "__main__":
    sys.exit(main())
