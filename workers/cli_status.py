"""``podchord status``: live workers, the node queues they consume, each node's capability."""

from __future__ import annotations

import argparse
from typing import Any

from celery import Celery

from tasks.jobs import node_queue
from tasks.names import check_image_ref, check_node

from .cli_output import emit

__all__ = ["EXIT_UNHEALTHY", "collect_status", "run_status"]

EXIT_UNHEALTHY = 3
_NODE_PREFIX = "podchord.node."


def run_status(app: Celery, args: argparse.Namespace) -> int:
    """Print the status; with ``--check`` exit 3 when something is unhealthy."""
    wanted = [check_node(n) for n in args.node or []]
    if args.probe is not None:
        check_image_ref(args.probe)
    status = collect_status(app, wanted, args.probe, args.timeout, nodes=not args.workers_only)
    emit(args.json, status, _text(status))
    return EXIT_UNHEALTHY if args.check and not status["healthy"] else 0


def collect_status(
    app: Celery, wanted: list[str], probe_image: str | None, timeout_s: float,
    *, nodes: bool = True,
) -> dict[str, Any]:
    """Ask the workers (ping, active queues) and each node's worker (``podchord.node_info``).

    Args:
        wanted: only these nodes (empty: every node a live worker serves).
        nodes: False asks the workers only; healthy then means some worker answered.

    Returns:
        JSON: ``workers`` (hostname, node, queues), ``nodes`` (per node: ``workers``, ``ok``,
        ``report`` from node_info or None, ``error``) and ``healthy``.
    """
    alive = {name for reply in app.control.ping(timeout=timeout_s) or [] for name in reply}
    queues = app.control.inspect(timeout=timeout_s).active_queues() or {}
    workers = []
    by_node: dict[str, list[str]] = {}
    for hostname in sorted(alive | set(queues)):
        names = sorted(q["name"] for q in queues.get(hostname) or [])
        own = [q.removeprefix(_NODE_PREFIX) for q in names if q.startswith(_NODE_PREFIX)]
        workers.append({
            "hostname": hostname, "node": own[0] if own else None, "queues": names,
            "answered_ping": hostname in alive,
        })
        for n in own:
            by_node.setdefault(n, []).append(hostname)
    if not nodes:
        return {"workers": workers, "nodes": {}, "healthy": bool(alive)}
    names = sorted(wanted or by_node)
    pending = {
        n: app.send_task(
            "podchord.node_info", args=(n, probe_image), queue=node_queue(n),
            expires=timeout_s + 60,
        )
        for n in names if n in by_node
    }
    report: dict[str, Any] = {}
    for n in names:
        entry: dict[str, Any] = {"workers": by_node.get(n, []), "ok": False, "report": None,
                                 "error": None}
        if n not in pending:
            entry["error"] = f"no live worker consumes {node_queue(n)}"
        else:
            try:
                # Probing starts and checkpoints a container: allow for it.
                info = pending[n].get(timeout=timeout_s + 60, propagate=True)
                entry["report"] = info
                entry["ok"] = bool(info["checkpoint_ready"])
                if not entry["ok"]:
                    entry["error"] = "; ".join(info["problems"])
            except Exception as exc:  # the node's own failure, rebuilt by Celery
                entry["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
            finally:
                pending[n].forget()
        report[n] = entry
    healthy = bool(alive) and bool(report) and all(e["ok"] for e in report.values())
    return {"workers": workers, "nodes": report, "healthy": healthy}


def _text(status: dict[str, Any]) -> str:
    lines = []
    for name, e in status["nodes"].items():
        r = e["report"]
        if r is not None:
            probe = r["probe"]
            probed = "not probed" if probe["ok"] is None else ("ok" if probe["ok"] else "FAILED")
            detail = (
                f"podman {r['podman_version']}, {r['oci_runtime']} "
                f"(cgroup {r['cgroup_version']}), kernel {r['kernel']}, checkpoint probe {probed}"
            )
        else:
            detail = ""
        word = "ok" if e["ok"] else "UNHEALTHY"
        lines.append(f"node {name}: {word}  workers {', '.join(e['workers']) or '-'}  {detail}")
        if e["error"]:
            lines.append(f"  {e['error']}")
    others = [w["hostname"] for w in status["workers"] if w["node"] is None]
    if others:
        lines.append(f"workers without a node queue: {', '.join(others)}")
    if not status["workers"]:
        lines.append("no live workers")
    elif not status["nodes"]:
        lines.append(f"workers: {', '.join(w['hostname'] for w in status['workers'])}")
    lines.append("healthy" if status["healthy"] else "UNHEALTHY")
    return "\n".join(lines)
