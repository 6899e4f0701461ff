"""One bench scenario: podchord and the sequential baseline on the same containers.

The project is created on node a. podchord checkpoints it (eviction mode) and restores it on
node b; the same containers are then brought back to a (untimed) and the baseline evicts them
from a, one by one, to files and S3, and restores them on b. Both sides move the same memory
from the same node to the same node through the same S3 server.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

import httpx

from tasks import api

from .baseline import baseline_evict, baseline_restore
from .bed import Bed
from .cpu import CpuMeter
from .procrss import TreeRss
from .workload import create_project, remove_project

__all__ = ["Spec", "run_scenario"]

TIMEOUT_S = 900


@dataclass(frozen=True)
class Spec:
    """What to run: ``services`` containers of ``mib`` MiB of ``content`` memory each."""

    name: str
    services: int
    mib: int
    content: str = "random"
    compress: bool = False
    breakdown: bool = False  # also ask CRIU for its own dump statistics (one extra dump)
    report: bool = True  # False for the warm-up run


def run_scenario(bed: Bed, spec: Spec, restore_rounds: int = 1) -> dict[str, Any]:
    """Run one scenario; the restores are compared over ``restore_rounds`` pairs (median).

    A restore takes seconds and a neighbour's burst of CPU moves it by one: the first pair
    runs as described above, each further pair restores podchord's checkpoint and then the
    baseline's archives on b again, and each side reports its median (and every round).
    """
    if restore_rounds < 1:
        raise ValueError("restore_rounds must be >= 1")
    lp_a, lp_b = bed.lp["a"], bed.lp["b"]
    out: dict[str, Any] = {"spec": asdict(spec), "load_before": os.getloadavg()}
    t = time.time()
    project = create_project(lp_a, bed.image, spec.services, spec.mib, spec.content)
    out["project"] = project.name
    out["create_s"] = round(time.time() - t, 3)
    roots = {f"worker_{n}": w.proc.pid for n, w in bed.workers.items()}
    single = {**bed.pids(), "bench": os.getpid()}
    try:
        if spec.breakdown:
            out["criu"] = criu_dump_stats(bed.socket("a"), next(iter(project.services.values())))
        with TreeRss(roots) as rss, CpuMeter(roots, single) as cpu:
            pc = _podchord_evict(bed, project.name, spec.compress)
        pc["worker_rss"], pc["cpu"] = rss.report(), cpu.result
        with TreeRss(roots) as rss, CpuMeter(roots, single) as cpu:
            pc.update(_podchord_restore(bed, f"{project.name}/{pc['checkpoint_id']}"))
        pc["restore_worker_rss"], pc["restore_cpu"] = rss.report(), cpu.result
        out["podchord"] = pc
        # Untimed: bring the same containers back to a (restoring the same checkpoint there),
        # so that the baseline too evicts from a and restores on b. Other sessions load the
        # two nodes differently; each comparison is then made on the same node.
        remove_project(lp_b, project)
        _podchord_restore(bed, f"{project.name}/{pc['checkpoint_id']}", node="a")
        prefix = f"baseline/{project.name}"
        with CpuMeter(roots, single) as cpu:
            bl = baseline_evict(lp_a, bed.s3, bed.bucket, prefix, project.services, bed.workdir)
        bl["cpu"] = cpu.result
        with CpuMeter(roots, single) as cpu:
            bl.update(
                baseline_restore(lp_b, bed.s3, bed.bucket, prefix, project.services, bed.workdir)
            )
        bl["restore_cpu"] = cpu.result
        pc_rounds, bl_rounds = [dict(pc)], [dict(bl)]
        for _ in range(restore_rounds - 1):
            remove_project(lp_b, project)
            pc_rounds.append(_podchord_restore(bed, f"{project.name}/{pc['checkpoint_id']}"))
            remove_project(lp_b, project)
            bl_rounds.append(
                baseline_restore(lp_b, bed.s3, bed.bucket, prefix, project.services, bed.workdir)
            )
        _take_median(pc, pc_rounds, "restore_timings")
        _take_median(bl, bl_rounds, "download_s", "import_s")
        out["baseline"] = bl
    finally:
        remove_project(lp_a, project)
        remove_project(lp_b, project)
        bed.store.delete_prefix(bed.store.layout.project_prefix(project.name))
        _delete_prefix(bed, f"baseline/{project.name}/")
    pc, bl = out["podchord"], out["baseline"]
    out["archive_bytes"] = pc["raw_bytes"]
    out["ratios"] = {
        "evict": round(pc["evict_s"] / bl["evict_s"], 3),
        "restore": round(pc["restore_s"] / bl["restore_s"], 3),
    }
    out["load_after"] = os.getloadavg()
    return out


def _take_median(side: dict[str, Any], rounds: list[dict[str, Any]], *with_it: str) -> None:
    """Set ``side``'s restore_s (and the fields ``with_it`` of that round) to the median round.

    The median round itself (the lower middle one for an even count), not an average: its
    phase timings then add up to its own total.
    """
    ordered = sorted(rounds, key=lambda r: r["restore_s"])
    middle = ordered[(len(ordered) - 1) // 2]
    side["restore_rounds_s"] = [r["restore_s"] for r in rounds]
    side["restore_s"] = middle["restore_s"]
    for name in with_it:
        side[name] = middle[name]


def _podchord_evict(bed: Bed, project: str, compress: bool) -> dict[str, Any]:
    requested = time.time()
    result = api.checkpoint(bed.app, project, "a", {"leave_running": False, "compress": compress})
    summary = result.get(timeout=TIMEOUT_S)
    answered = time.time()
    manifest = json.loads(bed.store.read_manifest(project, summary["checkpoint_id"]))
    services = manifest["services"]
    starts = [s["checkpoint_started_at"] for s in services]
    return {
        "checkpoint_id": summary["checkpoint_id"],
        # From the request to the committed manifest (same machine, same clock).
        "evict_s": round(manifest["committed_at"] - requested, 3),
        "client_evict_s": round(answered - requested, 3),
        "queue_s": round(manifest["created_at"] - requested, 3),
        "cut_skew_s": round(max(starts) - min(starts), 4),
        "raw_bytes": sum(s["archive"]["raw_size_bytes"] for s in services),
        "stored_bytes": sum(s["archive"]["size_bytes"] for s in services),
        "services": [
            {
                "service": s["name"],
                "started_after_s": round(s["checkpoint_started_at"] - requested, 3),
                "duration_s": round(s["checkpoint_ended_at"] - s["checkpoint_started_at"], 3),
                "raw_bytes": s["archive"]["raw_size_bytes"],
                "stored_bytes": s["archive"]["size_bytes"],
            }
            for s in services
        ],
        "commit_after_last_service_s": round(
            manifest["committed_at"] - max(s["checkpoint_ended_at"] for s in services), 3
        ),
    }


def _podchord_restore(bed: Bed, ref: str, node: str = "b") -> dict[str, Any]:
    requested = time.time()
    result = api.restore(bed.app, ref, node).get(timeout=TIMEOUT_S)
    done = time.time()
    states = {s: v["state"] for s, v in result["services"].items()}
    if set(states.values()) != {"running"}:
        raise RuntimeError(f"restore of {ref} left services not running: {states}")
    return {"restore_s": round(done - requested, 3), "restore_timings": result["timings"]}


def criu_dump_stats(socket: str, container: str) -> dict[str, Any]:
    """CRIU's own figures for one dump (no export, container left running).

    libpod returns ``criu_statistics`` only without ``export``, so this costs one extra dump;
    it tells how much of an export is CRIU and how much is Podman's tar and the transfer.
    """
    with httpx.Client(transport=httpx.HTTPTransport(uds=socket), timeout=TIMEOUT_S) as c:
        t = time.monotonic()
        r = c.post(
            f"http://podman/v5.0.0/libpod/containers/{container}/checkpoint",
            params={"leaveRunning": "true", "printStats": "true", "tcpEstablished": "true"},
        )
        wall = time.monotonic() - t
    r.raise_for_status()
    data = r.json()
    stats = data.get("criu_statistics") or {}
    return {
        "wall_s": round(wall, 3),
        "runtime_checkpoint_s": data.get("runtime_checkpoint_duration", 0) / 1e6,
        "frozen_s": stats.get("frozen_time", 0) / 1e6,
        "memdump_s": stats.get("memdump_time", 0) / 1e6,
        "memwrite_s": stats.get("memwrite_time", 0) / 1e6,
        "pages_written": stats.get("pages_written", 0),
    }


def _delete_prefix(bed: Bed, prefix: str) -> None:
    for page in bed.s3.get_paginator("list_objects_v2").paginate(Bucket=bed.bucket, Prefix=prefix):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            bed.s3.delete_objects(Bucket=bed.bucket, Delete={"Objects": keys})
