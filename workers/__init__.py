"""podchord's workers: the Celery app, the worker/beat/Flower entry points and the CLI."""

from __future__ import annotations

from .app import create_app, worker_queues

__all__ = ["create_app", "worker_queues"]
