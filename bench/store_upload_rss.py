"""Peak RSS of a streaming 1 GiB upload through the archive store, vs. the documented bound.

Run from the repo root with the test bed up::

    .venv/bin/python -m bench.store_upload_rss [--size-mib 1024] [--concurrency 4] [--compress]

The source is generated (never held whole): 65,537-byte chunks sliced from a 4 MiB random
block, so the full-read adapter has to assemble every part. RSS is sampled from
/proc/self/status every 5 ms. The object is deleted afterwards: moto's server keeps objects
in memory. Results go to bench/out/store_upload_rss.json.
"""

from __future__ import annotations

import argparse
import json
import random
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import boto3

from tasks.keys import new_checkpoint_id
from tasks.store import StoreSettings, open_store

REPO = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024


def testbed_env() -> dict[str, str]:
    out = subprocess.run(
        [REPO / "scripts" / "testbed", "env"], capture_output=True, text=True, check=True
    ).stdout
    env = {}
    for line in out.splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export ") :].partition("=")
            env[key] = value.strip('"')
    return env


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


class Sampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = rss_bytes()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(0.005):
            self.peak = max(self.peak, rss_bytes())

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return max(self.peak, rss_bytes())


def source(total: int, chunk: int = 65_537) -> Iterator[bytes]:
    block = random.Random(42).randbytes(4 * MiB)
    view = memoryview(block)
    sent = offset = 0
    while sent < total:
        n = min(chunk, total - sent, len(block) - offset)
        yield bytes(view[offset : offset + n])
        sent += n
        offset = (offset + n) % len(block)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--part-mib", type=int, default=8)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--compress", action="store_true")
    args = ap.parse_args()

    env = testbed_env()
    client = boto3.session.Session(
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env.get("AWS_DEFAULT_REGION", "us-east-1"),
    ).client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
    bucket = f"podchord-bench-{secrets.token_hex(4)}"
    client.create_bucket(Bucket=bucket)
    settings = StoreSettings(part_size_bytes=args.part_mib * MiB, max_concurrency=args.concurrency)
    store = open_store(f"s3://{bucket}/bench", s3_client=client, settings=settings)
    key = store.layout.service_archive(
        "bench", new_checkpoint_id(), "big", compressed=args.compress
    )
    total = args.size_mib * MiB

    # Warm up (imports, thread pools, connections) so the baseline is fair.
    store.put_stream(store.layout.image("0" * 64), source(MiB))
    baseline = rss_bytes()
    sampler = Sampler()
    sampler.start()
    started = time.monotonic()
    try:
        put = store.put_stream(key, source(total), compress=args.compress)
        elapsed = time.monotonic() - started
        peak = sampler.stop()
        etag = store.head(key).etag
    finally:
        store.delete_prefix(store.layout.prefix)
        store.abort_uploads(store.layout.prefix)
        client.delete_bucket(Bucket=bucket)

    part = settings.part_size_for(total)
    growth = peak - baseline
    bound = part * (args.concurrency + 2)
    result = {
        "total_bytes": total,
        "stored_bytes": put.size_bytes,
        "compress": args.compress,
        "part_size_bytes": part,
        "max_concurrency": args.concurrency,
        "etag": etag,
        "elapsed_s": round(elapsed, 2),
        "throughput_mib_s": round(total / MiB / elapsed, 1),
        "baseline_rss_bytes": baseline,
        "peak_rss_bytes": peak,
        "peak_growth_bytes": growth,
        "part_x_concurrency_bytes": part * args.concurrency,
        "documented_bound_bytes": bound,
        "growth_over_part_x_concurrency": round(growth / (part * args.concurrency), 2),
        "growth_over_documented_bound": round(growth / bound, 2),
    }
    out = REPO / "bench" / "out"
    out.mkdir(exist_ok=True)
    default = (args.size_mib, args.part_mib, args.concurrency, args.compress) == (1024, 8, 4, False)
    zstd = "-zstd" if args.compress else ""
    suffix = "" if default else f"-{args.size_mib}m-c{args.concurrency}-p{args.part_mib}{zstd}"
    (out / f"store_upload_rss{suffix}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
