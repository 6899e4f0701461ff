"""Module-level app for ``celery -A workers.celery_app``; built from the environment."""

from __future__ import annotations

from .app import create_app

app = create_app()
