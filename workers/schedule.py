"""Backup schedules for ``celery beat``, read from a TOML file.

One ``[[backup]]`` table per scheduled backup::

    [[backup]]
    project = "shop"          # compose project name
    node = "a"                # the node it runs on
    interval_s = 3600         # every N seconds ...
    # crontab = "0 */6 * * *" # ... or a 5-field crontab (minute hour day month weekday), UTC
    keep = 24                 # retention: committed checkpoints kept after each backup
    deadline_s = 600          # optional: the checkpoint fails clean if not committed by then
    compress = false          # optional: zstd-compress archives
    expires_s = 300           # optional: drop a slot not started within N seconds
    name = "shop-hourly"      # optional: the beat entry's name (default "backup:PROJECT@NODE")

Each entry queues ``podchord.backup`` (a ``leave_running`` checkpoint, then ``podchord.prune``
to ``keep``) on the node's queue, with an expiry so that slots missed while the node's worker
was down are dropped instead of piling up: the expiry is ``expires_s`` if given, else the
smaller of ``interval_s`` and ``deadline_s``, else (crontab) ``deadline_s`` or 300 s.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from celery import Celery
from celery.schedules import crontab, schedule

from tasks.errors import InvalidInput
from tasks.jobs import node_queue
from tasks.names import check_node, check_project
from tasks.options import CheckpointJobOptions

__all__ = [
    "SCHEDULERS", "BackupEntry", "beat_schedule", "configure_beat", "load_schedule",
    "parse_schedule",
]

_CRONTAB_EXPIRES_S = 300.0
SCHEDULERS = ("default", "redbeat")
_REDBEAT_PREFIX = "podchord:redbeat:"
_KEYS = {
    "name", "project", "node", "interval_s", "crontab", "keep", "deadline_s", "compress",
    "expires_s",
}


@dataclass(frozen=True)
class BackupEntry:
    """One scheduled backup (see the module docstring for the fields)."""

    name: str
    project: str
    node: str
    keep: int
    interval_s: float | None = None
    crontab: str | None = None
    deadline_s: float | None = None
    compress: bool = False
    expires_s: float | None = None

    @property
    def expiry_s(self) -> float:
        """Seconds after which a slot that no worker started is dropped."""
        if self.expires_s is not None:
            return self.expires_s
        bounds = [b for b in (self.interval_s, self.deadline_s) if b is not None]
        return min(bounds) if bounds else _CRONTAB_EXPIRES_S

    def options(self) -> dict[str, Any]:
        """The JSON options of ``podchord.backup``."""
        opts: dict[str, Any] = {"compress": self.compress}
        if self.deadline_s is not None:
            opts["deadline_s"] = self.deadline_s
        return opts


def load_schedule(path: str | Path) -> list[BackupEntry]:
    """Read and validate a schedule file.

    Raises:
        InvalidInput: the file is missing, not TOML, or an entry is wrong (named in the
            message with the file and the entry's position).
    """
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidInput(f"schedule file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read schedule file {str(path)!r}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"schedule file {str(path)!r} is not valid TOML: {exc}") from exc
    return parse_schedule(data, source=str(path))


def parse_schedule(data: Mapping[str, Any], source: str = "schedule") -> list[BackupEntry]:
    """Validate parsed TOML (``{"backup": [...]}``) into entries."""
    unknown = sorted(set(data) - {"backup"})
    if unknown:
        raise InvalidInput(f"{source}: unknown table(s) {unknown}; expected [[backup]]")
    raw = data.get("backup", [])
    if not isinstance(raw, list) or not raw:
        raise InvalidInput(f"{source}: no [[backup]] entries")
    entries = [_entry(item, f"{source}: backup #{i + 1}") for i, item in enumerate(raw)]
    seen: set[str] = set()
    for e in entries:
        if e.name in seen:
            raise InvalidInput(f"{source}: two entries are named {e.name!r}")
        seen.add(e.name)
    return entries


def beat_schedule(entries: list[BackupEntry]) -> dict[str, dict[str, Any]]:
    """Celery's ``beat_schedule`` for the entries."""
    out: dict[str, dict[str, Any]] = {}
    for e in entries:
        when: Any = (
            schedule(timedelta(seconds=e.interval_s))
            if e.interval_s is not None
            else _crontab(e.crontab or "", e.name)
        )
        out[e.name] = {
            "task": "podchord.backup",
            "schedule": when,
            "args": (e.project, e.node, e.keep, e.options()),
            "options": {"queue": node_queue(e.node), "expires": e.expiry_s},
        }
    return out


def configure_beat(app: Celery, env: Mapping[str, str]) -> None:
    """Put the schedule file's entries and the chosen scheduler into ``app``'s config.

    Raises:
        InvalidInput: no or a bad schedule file, an unknown scheduler, redbeat not installed.
    """
    path = env.get("PODCHORD_BEAT_SCHEDULE", "").strip()
    if not path:
        raise InvalidInput("PODCHORD_BEAT_SCHEDULE is not set (the schedule file)")
    app.conf.beat_schedule = beat_schedule(load_schedule(path))
    kind = env.get("PODCHORD_BEAT_SCHEDULER", "").strip() or "default"
    if kind not in SCHEDULERS:
        raise InvalidInput(f"PODCHORD_BEAT_SCHEDULER must be one of {SCHEDULERS}, got {kind!r}")
    if kind == "redbeat":
        try:
            import redbeat  # noqa: F401
        except ImportError:
            raise InvalidInput(
                "PODCHORD_BEAT_SCHEDULER=redbeat needs celery-redbeat: "
                "pip install 'podchord[redbeat]'"
            ) from None
        app.conf.update(
            beat_scheduler="redbeat.RedBeatScheduler",
            redbeat_redis_url=app.conf.broker_url,
            # Not the broker's transport options (a visibility timeout means nothing to it).
            redbeat_redis_options={},
            redbeat_key_prefix=_REDBEAT_PREFIX,
        )


def _entry(item: object, where: str) -> BackupEntry:
    if not isinstance(item, Mapping):
        raise InvalidInput(f"{where}: must be a table")
    unknown = sorted(set(item) - _KEYS)
    if unknown:
        raise InvalidInput(f"{where}: unknown key(s) {unknown}; known: {sorted(_KEYS)}")
    for key in ("project", "node", "keep"):
        if key not in item:
            raise InvalidInput(f"{where}: {key!r} is missing")
    try:
        project = check_project(item["project"])
        node = check_node(item["node"])
    except InvalidInput as exc:
        raise InvalidInput(f"{where}: {exc}") from None
    keep = item["keep"]
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise InvalidInput(f"{where}: keep must be a whole number >= 1, got {keep!r}")
    if ("interval_s" in item) == ("crontab" in item):
        raise InvalidInput(f"{where}: give exactly one of interval_s and crontab")
    interval = _seconds(item, "interval_s", where)
    deadline = _seconds(item, "deadline_s", where)
    expires = _seconds(item, "expires_s", where)
    cron = item.get("crontab")
    if cron is not None:
        if not isinstance(cron, str):
            raise InvalidInput(f"{where}: crontab must be a string like '0 */6 * * *'")
        _crontab(cron, where)
    compress = item.get("compress", False)
    if not isinstance(compress, bool):
        raise InvalidInput(f"{where}: compress must be true or false, got {compress!r}")
    try:
        CheckpointJobOptions(deadline_s=deadline)
    except InvalidInput as exc:
        raise InvalidInput(f"{where}: {exc}") from None
    name = item.get("name", f"backup:{project}@{node}")
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"{where}: name must be a non-empty string")
    return BackupEntry(
        name=name, project=project, node=node, keep=keep, interval_s=interval, crontab=cron,
        deadline_s=deadline, compress=compress, expires_s=expires,
    )


def _seconds(item: Mapping[str, Any], key: str, where: str) -> float | None:
    value = item.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise InvalidInput(f"{where}: {key} must be a number of seconds > 0, got {value!r}")
    return float(value)


def _crontab(text: str, where: str) -> crontab:
    fields = text.split()
    if len(fields) != 5:
        raise InvalidInput(
            f"{where}: crontab {text!r} must have 5 fields (minute hour day month weekday)"
        )
    minute, hour, day, month, weekday = fields
    try:
        return crontab(
            minute=minute, hour=hour, day_of_month=day, month_of_year=month, day_of_week=weekday
        )
    except ValueError as exc:
        raise InvalidInput(f"{where}: crontab {text!r}: {exc}") from exc
