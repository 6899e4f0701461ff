"""The bench runner, end to end on the real stack at a tiny size, so it cannot rot.

No timing thresholds (speed is the bench's job, not a test's): this checks that one run
produces the documented JSON fields with values that are physically plausible.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import boto3
import pytest
from botocore.exceptions import ClientError

from tests.conftest import REPO

pytestmark = [pytest.mark.podman, pytest.mark.services]

MiB = 1 << 20


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and value > 0


def test_bench_smoke_writes_the_documented_json(testbed, tmp_path, node_a, node_b):
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--preset", "smoke", "--no-warmup", "--out", str(out),
         "--restore-rounds", "2"],
        cwd=REPO, env={**os.environ, **testbed.env}, capture_output=True, text=True, timeout=240,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["schema"] == 1
    assert doc["machine"]["cpus"] >= 1
    assert doc["machine"]["packages"]["criu"]
    assert len(doc["load_start"]) == 3
    for key in ("disk_write_mb_s", "memory_copy_gb_s", "s3_upload_fileobj_mb_s"):
        assert _positive(doc["limits"][key]), key
    [row] = doc["scenarios"]
    assert row["spec"]["services"] == 1
    assert row["spec"]["mib"] == 8
    pc, bl = row["podchord"], row["baseline"]
    # The archive holds the container's 8 MiB of random memory (plus CRIU's metadata).
    assert 8 * MiB <= pc["raw_bytes"] < 32 * MiB
    assert pc["stored_bytes"] == pc["raw_bytes"]  # uncompressed scenario
    assert abs(bl["archive_bytes"] - pc["raw_bytes"]) < MiB  # same container, both ways
    assert row["archive_bytes"] == pc["raw_bytes"]
    for value in (pc["evict_s"], pc["restore_s"], bl["evict_s"], bl["restore_s"]):
        assert _positive(value)
    assert pc["client_evict_s"] >= pc["evict_s"] - 0.5  # the client learns after the commit
    assert pc["cut_skew_s"] == 0.0  # one service
    assert [s["service"] for s in pc["services"]] == ["s0"]
    assert row["ratios"]["evict"] == pytest.approx(pc["evict_s"] / bl["evict_s"], rel=0.01)
    assert row["ratios"]["restore"] == pytest.approx(pc["restore_s"] / bl["restore_s"], rel=0.01)
    # Two restore pairs: each side reports both rounds and its median (the lower middle).
    assert doc["restore_rounds"] == 2
    for side in (pc, bl):
        assert len(side["restore_rounds_s"]) == 2
        assert side["restore_s"] == min(side["restore_rounds_s"])
    timings = pc["restore_timings"]  # the median round's own phases
    assert timings["total_s"] <= pc["restore_s"] + 0.5
    for rss in (pc["worker_rss"], pc["restore_worker_rss"]):
        assert rss["samples"] >= 2
        assert rss["processes"] >= 4  # two workers, each with prefork children
        assert rss["peak_process_bytes"] > 10 * MiB  # a Python process with Celery loaded
        assert set(rss["tree_growth_bytes"]) == {"worker_a", "worker_b"}
    for cpu in (pc["cpu"], bl["cpu"]):
        assert 0 < cpu["machine_busy_fraction"] <= 1.0
        assert cpu["wall_s"] > 0
    assert pc["cpu"]["worker_a_cpu_s"] > 0  # node a's worker did the checkpoint
    crit = row["criu"]
    assert crit["pages_written"] * 4096 >= 8 * MiB
    assert set(doc["targets"]) == {
        "evict_ratio_3x256", "restore_ratio_max", "worker_process_rss_growth_mib",
        "cut_skew_3_services_s",
    }
    assert doc["targets"]["restore_ratio_max"]["value"] == pytest.approx(
        row["ratios"]["restore"], abs=0.001
    )
    # Everything the run made is gone: its containers on both nodes, and its own bucket.
    assert node_a.list_project(row["project"]) == []
    assert node_b.list_project(row["project"]) == []
    s3 = boto3.client("s3", endpoint_url=testbed.s3_endpoint)
    with pytest.raises(ClientError):
        s3.head_bucket(Bucket=doc["bucket"])
