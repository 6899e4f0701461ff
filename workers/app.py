"""The one place that builds podchord's Celery app.

Every setting below is chosen for one promise: a task is never lost and never half-done
silently. Nothing connects at import time; Celery connects when a worker starts or a task is
sent.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from kombu.entity import Queue

from tasks.jobs import SHARED_QUEUE, node_queue
from tasks.settings import Settings

from . import kombu_fix

__all__ = ["create_app", "worker_queues"]


def worker_queues(node: str | None) -> list[Queue]:
    """The queues a worker consumes: the shared one, plus its node's own queue."""
    queues = [Queue(SHARED_QUEUE)]
    if node is not None:
        queues.append(Queue(node_queue(node)))
    return queues


def create_app(settings: Settings | None = None) -> Celery:
    """Build the Celery app from settings (default: the ``PODCHORD_*`` environment)."""
    settings = Settings.from_env() if settings is None else settings
    kombu_fix.install()  # else a Redis restart kills every worker that runs a task
    # The visibility timeout must outlast the longest task, or Redis hands a still-running
    # task to a second worker. It is also what redelivers the task of a SIGKILLed worker.
    visibility_s = int(
        os.environ.get("PODCHORD_VISIBILITY_TIMEOUT_S", settings.task_timeout_s + 300)
    )
    app = Celery("podchord", broker=settings.broker_url, backend=settings.result_backend)
    conf: dict[str, Any] = {
        # JSON only: other services queue tasks by name, and pickle would run their code.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        # Ack after the task ran, and requeue if the worker process died under it: a killed
        # worker's checkpoint runs again (tasks are idempotent) instead of vanishing.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # One message at a time per process: a long checkpoint never sits on a second
        # reserved message that another idle worker could have run.
        "worker_prefetch_multiplier": 1,
        "broker_transport_options": {"visibility_timeout": visibility_s},
        "result_backend_transport_options": {"visibility_timeout": visibility_s},
        # If the broker connection drops, unacked long tasks are redelivered anyway; cancel
        # ours so the same checkpoint does not run twice at once.
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "broker_connection_retry_on_startup": True,
        # Results (and chord state) must outlive the longest chord, or a late body finds
        # nothing to join.
        "result_expires": max(86400, 4 * settings.task_timeout_s),
        "result_extended": True,  # records worker hostname (= node), args, name
        "task_track_started": True,
        # Flower: task events, including when a task is sent.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_time_limit": settings.task_timeout_s,
        "task_soft_time_limit": max(1, settings.task_timeout_s - 30),
        "task_default_queue": SHARED_QUEUE,
        "task_queues": worker_queues(settings.node),
        "worker_hijack_root_logger": False,
    }
    app.conf.update(conf)
    # Registers the shared_task definitions with this app.
    app.loader.import_default_modules()
    import tasks.jobs  # noqa: F401

    return app
