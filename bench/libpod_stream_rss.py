"""Peak client memory while streaming a checkpoint of a container holding 256 MiB.

Run from the repository root, with the test bed up:

    .venv/bin/python -m bench.libpod_stream_rss

The container's memory is real process memory: busybox ``tail -c 256MiB`` buffers random
bytes from a pipe that never ends, so CRIU must dump ~256 MiB of anonymous pages. The client
streams the archive to /dev/null; the figure that matters is how much this process's peak RSS
(VmHWM) grows meanwhile, which should be a few MiB (one chunk plus httpx buffers), not the
archive's size. Writes bench/out/libpod_stream_rss.json.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import subprocess
import time
from pathlib import Path

from tasks.libpod import Libpod
from tasks.libpod_base import CHUNK_BYTES

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out" / "libpod_stream_rss.json"
HOLD_BYTES = 256 << 20
HOLD = f"(head -c {HOLD_BYTES} /dev/urandom; sleep 100000) | tail -c {HOLD_BYTES} > /dev/null"


def socket_a() -> str:
    if os.environ.get("PODCHORD_SOCKET_A"):
        return os.environ["PODCHORD_SOCKET_A"]
    env = subprocess.run(
        [REPO / "scripts" / "testbed", "env"], capture_output=True, text=True, check=True
    ).stdout
    for line in env.splitlines():
        if line.startswith("export PODCHORD_SOCKET_A="):
            return line.split("=", 1)[1].strip('"')
    raise SystemExit("no PODCHORD_SOCKET_A: is the test bed up (scripts/testbed up)?")


def vm_hwm_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def wait_for_memory(lp: Libpod, name: str, timeout_s: float = 120) -> int:
    """Wait until a process in ``name`` holds HOLD_BYTES; return its RSS in bytes."""
    deadline = time.monotonic() + timeout_s
    while True:
        out = lp.exec(name, ["sh", "-c", "grep -h VmRSS /proc/[0-9]*/status"]).output
        rss = max((int(w) * 1024 for w in out.split() if w.isdigit()), default=0)
        if rss >= HOLD_BYTES or time.monotonic() > deadline:
            return rss
        time.sleep(0.5)


def main() -> None:
    name = f"bench-rss-{secrets.token_hex(3)}"
    with Libpod.from_socket(socket_a()) as lp:
        image = "localhost/busybox:test"
        lp.create_container({"name": name, "image": image, "command": ["sh", "-c", HOLD]})
        try:
            lp.start(name)
            container_rss = wait_for_memory(lp, name)
            lp.info()  # warm up: the connection and httpx's own buffers exist before we measure
            before = vm_hwm_bytes()
            started = time.monotonic()
            total = 0
            with lp.checkpoint_export(name) as chunks, open(os.devnull, "wb") as sink:
                for chunk in chunks:
                    sink.write(chunk)
                    total += len(chunk)
            seconds = time.monotonic() - started
            after = vm_hwm_bytes()
        finally:
            lp.remove(name, force=True)
    result = {
        "what": "stream a checkpoint+export of a container holding 256 MiB to /dev/null",
        "container_rss_bytes": container_rss,
        "archive_bytes": total,
        "seconds": round(seconds, 2),
        "mb_per_s": round(total / seconds / 1e6, 1),
        "client_vmhwm_before_bytes": before,
        "client_vmhwm_after_bytes": after,
        "client_peak_rss_growth_bytes": after - before,
        "chunk_bytes": CHUNK_BYTES,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"libpod_stream_rss: archive {total / 2**20:.1f} MiB in {seconds:.2f} s "
        f"({result['mb_per_s']} MB/s); client peak RSS grew "
        f"{(after - before) / 2**20:.2f} MiB (VmHWM {before / 2**20:.1f} -> "
        f"{after / 2**20:.1f} MiB); container held {container_rss / 2**20:.1f} MiB"
    )


if __name__ == "__main__":
    main()
