"""This machine's physical limits: disk write, memory copy and the S3 server's own rates."""

from __future__ import annotations

import io
import os
import platform
import time
from pathlib import Path
from typing import Any

from tasks.libpod import Libpod

__all__ = ["machine", "measure_limits"]

MiB = 1 << 20


def measure_limits(workdir: Path, mib: int, s3: Any, bucket: str) -> dict[str, Any]:
    """Measure with ``mib`` MiB: fdatasync'd disk write, memcpy, S3 put and two kinds of get."""
    block = os.urandom(4 * MiB)
    path = workdir / "disk-probe"
    t = time.monotonic()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for _ in range(max(1, mib // 4)):
            os.write(fd, block)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    disk_s = time.monotonic() - t
    n = max(1, mib // 4) * 4 * MiB
    src = block * (n // len(block))
    dst = bytearray(n)
    view = memoryview(dst)  # a memoryview assignment is one memcpy (bytearray slicing is not)
    view[:] = src  # touch every page first: the timed copies measure bandwidth only
    copy_s = float("inf")
    for _ in range(3):  # the best of three: other sessions share these cores
        t = time.monotonic()
        view[:] = src
        copy_s = min(copy_s, time.monotonic() - t)
    view.release()
    del dst
    key = "limits/probe"
    t = time.monotonic()
    s3.upload_fileobj(io.BytesIO(src), bucket, key)
    put_s = time.monotonic() - t
    t = time.monotonic()
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    while body.read(MiB):
        pass
    get_s = time.monotonic() - t
    t = time.monotonic()
    s3.download_file(bucket, key, str(path))
    dl_s = time.monotonic() - t
    path.unlink()
    s3.delete_object(Bucket=bucket, Key=key)
    return {
        "probe_bytes": n,
        "disk_write_mb_s": round(n / disk_s / 1e6, 1),
        "memory_copy_gb_s": round(n / copy_s / 1e9, 2),
        "s3_upload_fileobj_mb_s": round(n / put_s / 1e6, 1),
        "s3_get_object_mb_s": round(n / get_s / 1e6, 1),
        "s3_download_file_mb_s": round(n / dl_s / 1e6, 1),
    }


def machine(lp: Libpod, rootfs: str) -> dict[str, Any]:
    """What the numbers were measured on (package versions as the test bed recorded them)."""
    info = lp.info()
    versions = Path(rootfs, ".podchord-versions")
    packages = (
        dict(line.split(" ", 1) for line in versions.read_text().splitlines() if " " in line)
        if versions.exists()
        else {}
    )
    mem = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem = int(line.split()[1]) * 1024
    return {
        "cpus": os.cpu_count(),
        "cpu_model": info.cpu_model,
        "memory_bytes": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "podman": info.podman_version,
        "packages": packages,
    }
