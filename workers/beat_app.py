"""Module-level app for ``celery -A workers.beat_app beat`` (what ``podchord beat`` runs).

The schedule and scheduler come from the environment: see :func:`workers.schedule.configure_beat`.
"""

from __future__ import annotations

import os

from .app import create_app
from .schedule import configure_beat

__all__ = ["app"]

app = create_app()
configure_beat(app, os.environ)
