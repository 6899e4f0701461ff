"""``podchord``: a thin CLI that parses flags and delegates to Celery and the task library.

Exit codes (also in README and docs/operations.md):

* 0 success (``status --check``: healthy);
* 1 the operation failed or timed out, or the broker/store could not be reached;
* 2 bad arguments or settings (nothing was queued);
* 3 ``status --check`` found no worker or a node unhealthy.

Errors are one line on stderr (JSON with ``--json``); ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

from tasks.errors import InvalidInput, PodchordError

from .cli_output import error_line

__all__ = ["EXIT_FAILED", "EXIT_UNHEALTHY", "EXIT_USAGE", "build_parser", "main"]

EXIT_FAILED, EXIT_USAGE, EXIT_UNHEALTHY = 1, 2, 3


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (JSON with ``--json``), not usage + error."""

    json_errors = False

    def error(self, message: str) -> NoReturn:
        error_line(_Parser.json_errors, "UsageError", f"{self.prog}: {message}", EXIT_USAGE)
        sys.exit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    """The full ``podchord`` parser (also read by tests/test_compose.py)."""
    p = _Parser(prog="podchord", description="Checkpoint, ship and restore Podman projects.")
    p.add_argument("--debug", action="store_true", help="print tracebacks of errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    m.add_argument("--from", dest="source", required=True, metavar="NODE")
    m.add_argument("--to", dest="target", required=True, metavar="NODE")
    m.add_argument("--deadline", type=float, metavar="SECONDS")
    m.add_argument("--compress", action="store_true")
    m.add_argument("--force-cpu", action="store_true")

    ls = sub.add_parser("ls", help="list a project's checkpoints, newest first")
    ls.add_argument("project")
    sh = sub.add_parser("show", help="print a checkpoint's manifest (PROJECT[/CHECKPOINT_ID])")
    sh.add_argument("checkpoint")
    pr = sub.add_parser("prune", help="keep the newest N committed checkpoints")
    pr.add_argument("project")
    pr.add_argument("--keep", type=int, required=True)
    pr.add_argument("--grace", type=float, default=3600.0, metavar="SECONDS")

    st = sub.add_parser("status", help="live workers, node queues, Podman/CRIU per node")
    st.add_argument("--node", action="append", help="only this node (repeatable)")
    st.add_argument("--probe", metavar="IMAGE",
                    help="really checkpoint a throwaway container of IMAGE on each node")
    st.add_argument("--timeout", type=float, default=3.0, metavar="SECONDS")
    st.add_argument("--check", action="store_true", help="exit 3 unless healthy")
    st.add_argument("--workers-only", action="store_true",
                    help="ask the workers only (ping, queues), not each node's Podman")

    b = sub.add_parser("beat", help="run celery beat with a backup schedule file")
    b.add_argument("--schedule", required=True, metavar="FILE", help="TOML schedule")
    b.add_argument("--scheduler", choices=("default", "redbeat"),
                   help="default: PODCHORD_BEAT_SCHEDULER, else Celery's own")
    b.add_argument("--schedule-db", default="/var/lib/podchord/celerybeat-schedule",
                   metavar="PATH", help="state file of the default scheduler")
    b.add_argument("--loglevel", default="INFO")

    f = sub.add_parser("flower", help="run Flower (basic auth from PODCHORD_FLOWER_BASIC_AUTH)")
    f.add_argument("--address", default="127.0.0.1")
    f.add_argument("--port", type=int, default=5555)
    f.add_argument("--url-prefix", default="")
    f.add_argument("--no-auth", action="store_true",
                   help="run without authentication (never on a shared network)")

    for sp in (c, r, m):
        sp.add_argument("--wait", action="store_true", help="wait, showing progress")
        sp.add_argument("--timeout", type=float, default=3600.0, metavar="SECONDS")
    for sp in sub.choices.values():
        sp.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``podchord`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _Parser.json_errors = "--json" in argv
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except InvalidInput as exc:
        return _fail(args, exc, EXIT_USAGE)
    except KeyboardInterrupt:
        return _fail(args, PodchordError("interrupted (queued tasks go on)"), EXIT_FAILED)
    except Exception as exc:  # a remote failure arrives as whatever Celery rebuilt
        return _fail(args, exc, EXIT_FAILED)


def _fail(args: argparse.Namespace, exc: BaseException, code: int) -> int:
    if args.debug:
        traceback.print_exception(exc)
    error_line(args.json, type(exc).__name__, str(exc), code)
    return code


def _dispatch(args: argparse.Namespace) -> int:
    from . import cli_procs

    if args.command == "worker":
        return cli_procs.run_worker(args)
    if args.command == "beat":
        return cli_procs.run_beat(args)
    if args.command == "flower":
        return cli_procs.run_flower(args)
    if args.command in ("ls", "show", "prune"):
        from .cli_store import run_store_command

        return run_store_command(args)
    from .app import create_app

    app = create_app()
    if args.command == "status":
        from .cli_status import run_status

        return run_status(app, args)
    from .cli_tasks import run_task_command

    return run_task_command(app, args)


if __name__ == "__main__":
    sys.exit(main())
