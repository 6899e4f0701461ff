"""A small Python facade: queue podchord's tasks by name and get Celery results back.

Services that do not import podchord can do the same with ``app.send_task`` (see
``docs/api.md``); this facade adds the client-side half of the deadline: the task expires at
the deadline and a watchdog on the shared queue fails it clean if the node never picks it up.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from celery import Celery
from celery.result import AsyncResult

from .jobs import SHARED_QUEUE, node_queue
from .names import check_node, check_project
from .nodes import require_node
from .options import CheckpointJobOptions, MigrateOptions, RestoreJobOptions, decode_options

__all__ = ["checkpoint", "migrate", "restore"]

_GRACE_S = 2.0


def checkpoint(
    app: Celery, project: str, node: str, options: Mapping[str, Any] | None = None
) -> AsyncResult:
    """Queue ``podchord.checkpoint_project``; the result is the commit summary."""
    opts = decode_options(CheckpointJobOptions, options)  # fail here, not on the worker
    project = check_project(project)
    return _send(app, "podchord.checkpoint_project", (project, node, dict(options or {})),
                 node, project, opts.deadline_s)


def restore(
    app: Celery, checkpoint_ref: str, node: str, options: Mapping[str, Any] | None = None
) -> AsyncResult:
    """Queue ``podchord.restore_project`` on the target node's queue."""
    decode_options(RestoreJobOptions, options)
    require_node(app, node)  # a restore has no deadline: never queue it to nobody
    return app.send_task(
        "podchord.restore_project", args=(checkpoint_ref, node, dict(options or {})),
        queue=node_queue(node),
    )


def migrate(
    app: Celery, project: str, source: str, target: str,
    options: Mapping[str, Any] | None = None,
) -> AsyncResult:
    """Queue ``podchord.migrate``; the result holds the checkpoint and the restore."""
    opts = decode_options(MigrateOptions, options)
    project = check_project(project)
    check_node(target)
    return _send(app, "podchord.migrate", (project, source, target, dict(options or {})),
                 source, project, opts.deadline_s)


def _send(
    app: Celery, name: str, args: tuple[Any, ...], node: str, project: str,
    deadline_s: float | None,
) -> AsyncResult:
    if deadline_s is None:
        # Without a deadline nothing would ever fail a task queued to a node nobody serves.
        require_node(app, node)
        return app.send_task(name, args=args, queue=node_queue(node))
    deadline = time.time() + deadline_s
    result = app.send_task(
        name, args=args, queue=node_queue(node), expires=datetime.fromtimestamp(deadline, UTC)
    )
    app.send_task(
        "podchord.checkpoint_deadline", args=(result.id, project, node), queue=SHARED_QUEUE,
        eta=datetime.fromtimestamp(deadline + _GRACE_S, UTC),
    )
    return result
