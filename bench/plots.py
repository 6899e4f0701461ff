"""PNG plots of a bench JSON: ``python -m bench.plots bench/out/bench.json docs/img``.

Needs matplotlib (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["write_plots"]

SERIES = {
    "podchord evict": lambda r: r["podchord"]["evict_s"],
    "baseline evict": lambda r: r["baseline"]["evict_s"],
    "podchord restore": lambda r: r["podchord"]["restore_s"],
    "baseline restore": lambda r: r["baseline"]["restore_s"],
}
STYLE = {
    "podchord evict": ("tab:blue", "-o"),
    "baseline evict": ("tab:blue", "--s"),
    "podchord restore": ("tab:green", "-o"),
    "baseline restore": ("tab:green", "--s"),
}


def _random(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["spec"]["content"] == "random" and not r["spec"]["compress"]]


def write_plots(doc: dict[str, Any], outdir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outdir.mkdir(parents=True, exist_ok=True)
    rows = doc["scenarios"]
    load = f"load {doc['load_start'][0]:.1f}->{doc['load_end'][0]:.1f}"
    written = []

    one = sorted(
        (r for r in _random(rows) if r["spec"]["services"] == 1), key=lambda r: r["archive_bytes"]
    )
    many = sorted(
        (r for r in _random(rows) if r["spec"]["mib"] == 64), key=lambda r: r["spec"]["services"]
    )
    for name, chosen, x, xlabel in (
        (
            "time_vs_size.png",
            one,
            lambda r: r["archive_bytes"] / 1e6,
            "archive size (MB), 1 service",
        ),
        ("time_vs_services.png", many, lambda r: r["spec"]["services"], "services of 64 MiB each"),
    ):
        if len(chosen) < 2:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for label, y in SERIES.items():
            color, fmt = STYLE[label]
            ax.plot([x(r) for r in chosen], [y(r) for r in chosen], fmt, color=color, label=label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("seconds")
        ax.set_title(f"podchord vs sequential baseline ({load})")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(outdir / name, dpi=110)
        plt.close(fig)
        written.append(outdir / name)

    broken = [r for r in one if "criu" in r]
    if broken:
        written.append(_phases(plt, broken, outdir / "phases.png", load))
    return written


def _phases(plt: Any, rows: list[dict[str, Any]], path: Path, load: str) -> Path:
    """Stacked bars: where a 1-service eviction and restore spend their time."""
    fig, (ev, rs) = plt.subplots(1, 2, figsize=(11, 4.5))
    labels = [f"{r['archive_bytes'] / 1e6:.0f} MB" for r in rows]
    xs = range(len(rows))
    w = 0.38
    # Baseline eviction, split: CRIU's own dump, then Podman until the first byte (its tar
    # into a temp file), the stream to the file, the S3 upload.
    parts: dict[str, list[float]] = {
        "CRIU dump (separate run)": [],
        "Podman tar (to 1st byte)": [],
        "stream to file": [],
        "S3 upload": [],
    }
    for r in rows:
        svc = r["baseline"]["services"][0]
        criu = r["criu"]["wall_s"]
        parts["CRIU dump (separate run)"].append(criu)
        parts["Podman tar (to 1st byte)"].append(max(0.0, svc["first_byte_s"] - criu))
        parts["stream to file"].append(svc["export_s"] - svc["first_byte_s"])
        parts["S3 upload"].append(svc["upload_s"])
    bottom = [0.0] * len(rows)
    for label, vals in parts.items():
        ev.bar([x - w / 2 for x in xs], vals, w, bottom=bottom, label=f"baseline: {label}")
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ev.bar(
        [x + w / 2 for x in xs],
        [r["podchord"]["evict_s"] for r in rows],
        w,
        color="black",
        alpha=0.7,
        label="podchord (streamed, one task)",
    )
    ev.set_xticks(list(xs), labels)
    ev.set_ylabel("seconds")
    ev.set_title("eviction to durable, 1 service")
    ev.legend(fontsize=7)
    # The preflight checks and the probe run during the download (tasks/restore.py): the
    # download bar includes them; a probe after an image load falls under "other".
    rparts: dict[str, list[float]] = {
        "manifest": [],
        "download (checks overlapped)": [],
        "images+networks": [],
        "Podman restore": [],
        "queue/other": [],
    }
    for r in rows:
        t = r["podchord"]["restore_timings"]
        rparts["manifest"].append(t["manifest_s"])
        rparts["download (checks overlapped)"].append(t["download_s"])
        rparts["images+networks"].append(t["images_s"] + t["networks_s"])
        rparts["Podman restore"].append(t["restore_s"])
        known = t["manifest_s"] + t["download_s"] + t["images_s"] + t["networks_s"]
        rparts["queue/other"].append(max(0.0, r["podchord"]["restore_s"] - known - t["restore_s"]))
    bottom = [0.0] * len(rows)
    for label, vals in rparts.items():
        rs.bar([x - w / 2 for x in xs], vals, w, bottom=bottom, label=f"podchord: {label}")
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    dl = [r["baseline"]["download_s"] for r in rows]
    rs.bar([x + w / 2 for x in xs], dl, w, color="grey", label="baseline: download")
    rs.bar(
        [x + w / 2 for x in xs],
        [r["baseline"]["import_s"] for r in rows],
        w,
        bottom=dl,
        color="black",
        alpha=0.7,
        label="baseline: Podman import+restore",
    )
    rs.set_xticks(list(xs), labels)
    rs.set_title("restore, 1 service")
    rs.legend(fontsize=7)
    fig.suptitle(f"where the time goes ({load})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    doc = json.loads(Path(sys.argv[1]).read_text())
    for p in write_plots(doc, Path(sys.argv[2])):
        print(p)
