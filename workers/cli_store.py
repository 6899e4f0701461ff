"""``podchord ls|show|prune``: read or prune the archive store directly."""

from __future__ import annotations

import argparse
import json
from typing import Any

from tasks.jobs import _jsonable
from tasks.names import check_project
from tasks.restore import load_manifest
from tasks.runtime import runtime

from .cli_output import emit, human_bytes

__all__ = ["run_store_command"]


def run_store_command(args: argparse.Namespace) -> int:
    """List, show or prune; prints JSON with ``--json``."""
    store = runtime().store()
    if args.command == "ls":
        project = check_project(args.project)
        rows = [_jsonable(e) for e in store.list_checkpoints(project)]
        text = "\n".join(
            f"{r['checkpoint_id']}  {'committed  ' if r['committed'] else 'UNCOMMITTED'}  "
            f"{human_bytes(r['size_bytes']):>10}  {r['object_count']} objects"
            + (f", {r['open_uploads']} open uploads" if r["open_uploads"] else "")
            for r in rows
        ) or f"no checkpoints of {project}"
        emit(args.json, rows, text)
    elif args.command == "show":
        manifest = load_manifest(store, args.checkpoint).to_json()
        emit(args.json, manifest, _manifest_text(manifest))
    else:
        report = _jsonable(
            store.prune(check_project(args.project), keep=args.keep, grace_s=args.grace)
        )
        emit(args.json, report, json.dumps(report, indent=2, sort_keys=True))
    return 0


def _manifest_text(m: dict[str, Any]) -> str:
    src = m.get("source")
    lines = [
        f"checkpoint {m.get('project')}/{m.get('checkpoint_id')}  mode {m.get('mode')}",
    ]
    if isinstance(src, dict):
        lines.append(
            f"source node {src.get('node')}: podman {src.get('podman_version')}, "
            f"{src.get('oci_runtime')}, kernel {src.get('kernel')}, {src.get('arch')}"
        )
    for svc in m.get("services") or []:
        arch = svc.get("archive", {})
        lines.append(
            f"  service {svc.get('name')}: container {svc.get('container')}, image "
            f"{svc.get('image')}, {human_bytes(int(arch.get('size_bytes', 0)))} "
            f"sha256 {str(arch.get('sha256', ''))[:12]}"
        )
    for net in m.get("networks") or []:
        lines.append(f"  network {net.get('name')}")
    for img in m.get("images") or []:
        lines.append(f"  image {img.get('id', '')[:12]} {', '.join(img.get('names', []))}")
    return "\n".join(lines)
