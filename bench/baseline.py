"""The script a user would write instead of podchord: one service after the other.

Eviction: libpod checkpoint+export of each service to a file, then ``boto3 upload_file`` of
that file (boto3's default transfer settings) to the same S3 server. Restore: for each
service, a ``get_object`` streamed to a file and a libpod import+restore, then wait until it
runs. (``download_file`` would be the other obvious call, but against moto its parallel
ranged GETs are several times slower than one streamed GET -- see ``limits`` in the JSON --
and a weak baseline would flatter podchord.) Same
CRIU options as podchord's eviction mode (stop on dump, established TCP).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tasks.libpod import Libpod
from tasks.libpod_types import CheckpointOptions, RestoreOptions

__all__ = ["baseline_evict", "baseline_restore"]


def baseline_evict(
    lp: Libpod, s3: Any, bucket: str, prefix: str, containers: dict[str, str], workdir: Path
) -> dict[str, Any]:
    """Export then upload each service in turn; return total and per-service times."""
    opts = CheckpointOptions(leave_running=False, tcp_established=True)
    began = time.time()
    per: list[dict[str, Any]] = []
    for svc, name in sorted(containers.items()):
        path = workdir / f"{prefix.replace('/', '_')}-{svc}.tar"
        t0 = time.time()
        first: float | None = None
        size = 0
        with lp.checkpoint_export(name, opts) as chunks, path.open("wb") as out:
            for chunk in chunks:
                if first is None:
                    first = time.time()
                out.write(chunk)
                size += len(chunk)
        t1 = time.time()
        s3.upload_file(str(path), bucket, f"{prefix}/{svc}.tar")
        t2 = time.time()
        path.unlink()
        per.append(
            {
                "service": svc,
                "started_at": t0,
                "archive_bytes": size,
                "first_byte_s": round((first or t1) - t0, 3),
                "export_s": round(t1 - t0, 3),
                "upload_s": round(t2 - t1, 3),
            }
        )
    ended = time.time()
    starts = [p["started_at"] for p in per]
    return {
        "evict_s": round(ended - began, 3),
        "cut_skew_s": round(max(starts) - min(starts), 3),
        "archive_bytes": sum(p["archive_bytes"] for p in per),
        "export_s": round(sum(p["export_s"] for p in per), 3),
        "upload_s": round(sum(p["upload_s"] for p in per), 3),
        "services": per,
    }


def baseline_restore(
    lp: Libpod, s3: Any, bucket: str, prefix: str, containers: dict[str, str], workdir: Path
) -> dict[str, Any]:
    """Download then import+restore each service in turn; return the times."""
    opts = RestoreOptions(tcp_established=True)
    began = time.time()
    download_s = restore_s = 0.0
    for svc, name in sorted(containers.items()):
        path = workdir / f"{prefix.replace('/', '_')}-{svc}.restore.tar"
        t0 = time.time()
        body = s3.get_object(Bucket=bucket, Key=f"{prefix}/{svc}.tar")["Body"]
        with path.open("wb") as out:
            for chunk in body.iter_chunks(1 << 20):
                out.write(chunk)
        t1 = time.time()
        lp.restore(path, opts)
        lp.wait_state(name, ("running",), timeout_s=120)
        t2 = time.time()
        path.unlink()
        download_s += t1 - t0
        restore_s += t2 - t1
    return {
        "restore_s": round(time.time() - began, 3),
        "download_s": round(download_s, 3),
        "import_s": round(restore_s, 3),
    }
