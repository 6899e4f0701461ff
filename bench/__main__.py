"""Run podchord's benchmarks against the running test bed: ``python -m bench --help``.

Prints a Markdown table and writes everything measured as JSON (default
``bench/out/bench.json``); see docs/benchmarks.md for the fields and the latest results.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .bed import Bed
from .limits import machine, measure_limits
from .presets import PRESETS, WARMUP
from .report import fits, markdown, table, targets
from .scenario import run_scenario

REPO = Path(__file__).resolve().parent.parent
SCHEMA = 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="full")
    ap.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help="run only the scenarios whose name contains NAME (repeatable)",
    )
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "bench.json")
    ap.add_argument(
        "--plots",
        type=Path,
        default=None,
        metavar="DIR",
        help="also write PNG plots to DIR (needs the 'bench' extra: matplotlib)",
    )
    ap.add_argument(
        "--restore-rounds",
        type=int,
        default=3,
        metavar="N",
        help="restore pairs (podchord, baseline) per scenario; the median is reported",
    )
    ap.add_argument("--no-warmup", action="store_true")
    ap.add_argument("--concurrency", type=int, default=6, help="prefork children per worker")
    ap.add_argument(
        "--probe-mib",
        type=int,
        default=None,
        help="size of the disk/memory probes (default: 256, 16 for smoke)",
    )
    args = ap.parse_args(argv)
    specs = [
        s for s in PRESETS[args.preset] if not args.only or any(o in s.name for o in args.only)
    ]
    if not specs:
        ap.error(f"no scenario of preset {args.preset!r} matches {args.only}")
    if args.restore_rounds < 1:
        ap.error("--restore-rounds must be >= 1")
    probe_mib = args.probe_mib or (16 if args.preset == "smoke" else 256)

    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "preset": args.preset,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_start": os.getloadavg(),
    }
    began = time.monotonic()
    with Bed(concurrency=args.concurrency) as bed:
        doc["machine"] = machine(bed.lp["a"], bed.env["PODCHORD_TESTBED_ROOTFS"])
        doc["worker_concurrency"] = args.concurrency
        doc["restore_rounds"] = args.restore_rounds
        doc["bucket"] = bed.bucket
        doc["limits"] = measure_limits(bed.workdir, probe_mib, bed.s3, bed.bucket)
        if not args.no_warmup:
            run_scenario(bed, WARMUP)
        rows = []
        for spec in specs:
            print(f"bench: {spec.name} ...", file=sys.stderr, flush=True)
            rows.append(run_scenario(bed, spec, args.restore_rounds))
            print(table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    doc["scenarios"] = rows
    doc["fits"] = fits(rows)
    doc["targets"] = targets(rows)
    doc["load_end"] = os.getloadavg()
    doc["duration_s"] = round(time.monotonic() - began, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(doc) + "\n")
    print(table(rows))
    print(json.dumps({"fits": doc["fits"], "targets": doc["targets"]}, indent=2))
    if args.plots is not None:
        from .plots import write_plots

        for path in write_plots(doc, args.plots):
            print(f"bench: wrote {path}", file=sys.stderr)
    print(f"bench: wrote {args.out} and {args.out.with_suffix('.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
