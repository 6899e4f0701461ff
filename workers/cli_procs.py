"""``podchord worker|beat|flower``: check the settings, then become the Celery process.

Each command replaces itself (``exec``) with ``celery ...`` so that signals from a service
manager or a container runtime reach Celery directly.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

from tasks.errors import InvalidInput
from tasks.jobs import SHARED_QUEUE, node_queue
from tasks.names import check_node
from tasks.settings import Settings

__all__ = ["beat_argv", "flower_argv", "run_beat", "run_flower", "run_worker"]

_CELERY = [sys.executable, "-m", "celery"]


def run_worker(args: argparse.Namespace) -> int:
    """Exec a worker consuming the shared queue and the node's own queue."""
    node = check_node(args.node)
    env = dict(os.environ, PODCHORD_NODE=node, PODCHORD_PODMAN_SOCKET=args.podman_socket)
    settings = Settings.from_env(env)  # fail here, with the variable's name, not in Celery
    # Each upload runs in fresh transfer threads; glibc gives them fresh malloc arenas and,
    # its mmap threshold having grown past the 8 MiB part buffers, keeps every earlier
    # upload's buffers there: a prefork child's peak grew 44 -> 72 -> 81 MiB over consecutive
    # 64 MiB uploads (the bench's 6 x 64 MiB eviction: 91 MiB in one child). A fixed 4 MiB
    # threshold hands each part buffer back (<= 52 MiB growth in every bench scenario), for
    # ~35% more worker CPU per byte uploaded (fresh pages). MALLOC_ARENA_MAX=2 instead costs
    # no CPU but still let one child reach 75 MiB. The environment may override either.
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(4 << 20))
    _drop_restore_leftovers(settings.spool_dir)
    argv = [
        *_CELERY, "-A", "workers.celery_app", "worker",
        "-Q", f"{SHARED_QUEUE},{node_queue(node)}", "-n", f"{node}@%h",
        "--concurrency", str(args.concurrency), "--loglevel", args.loglevel, "-E",
    ]
    return _exec(argv, env)


def _drop_restore_leftovers(spool_dir: Path) -> None:
    """Delete restore downloads a killed worker left (archives hold process memory).

    Nothing restores before this worker starts; the eviction tees (``<checkpoint_id>/``)
    stay, since they are what a failed checkpoint rolls back from.
    """
    for stale in Path(spool_dir).glob("restore-*"):
        shutil.rmtree(stale, ignore_errors=True)


def beat_argv(args: argparse.Namespace, env: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
    """Validate the schedule and scheduler; return the ``celery beat`` command and its env."""
    from celery import Celery

    from .schedule import configure_beat

    schedule = Path(args.schedule).resolve()
    env_out = dict(env, PODCHORD_BEAT_SCHEDULE=str(schedule))
    if args.scheduler is not None:
        env_out["PODCHORD_BEAT_SCHEDULER"] = args.scheduler
    Settings.from_env(env_out)
    configure_beat(Celery("check", broker="redis://", set_as_current=False), env_out)
    argv = [*_CELERY, "-A", "workers.beat_app", "beat", "--loglevel", args.loglevel]
    if env_out.get("PODCHORD_BEAT_SCHEDULER", "default") in ("", "default"):
        db = Path(args.schedule_db)
        db.parent.mkdir(parents=True, exist_ok=True)
        argv += ["--schedule", str(db)]
    return argv, env_out


def run_beat(args: argparse.Namespace) -> int:
    """Exec ``celery beat`` with the schedule file's backups."""
    argv, env = beat_argv(args, os.environ)
    return _exec(argv, env)


def flower_argv(
    args: argparse.Namespace, env: Mapping[str, str]
) -> tuple[list[str], dict[str, str]]:
    """Check auth and settings; return the ``celery flower`` command and its env.

    The credentials travel in the environment (``FLOWER_BASIC_AUTH``), never on the command
    line, where every local user could read them in the process list.

    Raises:
        InvalidInput: no ``PODCHORD_FLOWER_BASIC_AUTH`` and no ``--no-auth``, a malformed
            credential, or Flower not installed.
    """
    if importlib.util.find_spec("flower") is None:
        raise InvalidInput("Flower is not installed: pip install 'podchord[flower]'")
    Settings.from_env(env)
    env_out = {k: v for k, v in env.items() if k not in ("FLOWER_BASIC_AUTH", "FLOWER_AUTH")}
    creds = env.get("PODCHORD_FLOWER_BASIC_AUTH", "").strip()
    if args.no_auth:
        if creds:
            raise InvalidInput("--no-auth given but PODCHORD_FLOWER_BASIC_AUTH is set; pick one")
    else:
        if not creds:
            raise InvalidInput(
                "PODCHORD_FLOWER_BASIC_AUTH is not set (user:password[,user2:password2]); "
                "Flower refuses to start without authentication unless --no-auth is given"
            )
        for cred in creds.split(","):
            user, sep, password = cred.partition(":")
            if not sep or not user or not password:
                raise InvalidInput(
                    "PODCHORD_FLOWER_BASIC_AUTH must be user:password[,user2:password2]"
                )
        env_out["FLOWER_BASIC_AUTH"] = creds
    argv = [
        *_CELERY, "-A", "workers.celery_app", "flower",
        f"--address={args.address}", f"--port={args.port}",
    ]
    if args.url_prefix:
        argv.append(f"--url_prefix={args.url_prefix}")
    return argv, env_out


def run_flower(args: argparse.Namespace) -> int:
    """Exec Flower, with basic auth unless ``--no-auth``."""
    argv, env = flower_argv(args, os.environ)
    return _exec(argv, env)


def _exec(argv: list[str], env: Mapping[str, str]) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(argv[0], argv, dict(env))
    return 0  # not reached
