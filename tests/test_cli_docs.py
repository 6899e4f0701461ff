"""docs/api.md stays true: its option tables and task list match the code."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from tasks.options import CheckpointJobOptions, MigrateOptions, RestoreJobOptions

API = Path(__file__).resolve().parent.parent / "docs" / "api.md"


def _sections() -> dict[str, str]:
    parts = re.split(r"^### `(podchord\.[a-z_]+)\(", API.read_text(), flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


@pytest.mark.parametrize(
    ("task", "cls"),
    [
        ("podchord.checkpoint_project", CheckpointJobOptions),
        ("podchord.restore_project", RestoreJobOptions),
        ("podchord.migrate", MigrateOptions),
    ],
)
def test_option_tables_match_the_dataclasses(task, cls):
    rows = re.findall(r"^\| `([a-z_]+)` \| ([^|]+) \| `([^`]+)` \|", _sections()[task], re.M)
    documented = {name: json.loads(default) for name, _, default in rows}
    actual = {f.name: f.default for f in dataclasses.fields(cls)}
    assert documented == actual


def test_every_podchord_task_is_documented():
    from tasks.settings import Settings
    from workers.app import create_app

    app = create_app(Settings(broker_url="redis://x", result_backend="redis://x",
                              store_url="file:///x"))
    names = {n for n in app.tasks if n.startswith("podchord.")}
    text = API.read_text()
    assert {n for n in names if f"`{n}" not in text} == set()
    assert set(_sections()) <= names
