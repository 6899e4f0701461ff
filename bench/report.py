"""Turn scenario results into fits, target verdicts and a text table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["fit", "fits", "table", "targets"]

MiB = 1 << 20

TARGETS = {
    "evict_ratio_3x256": 0.5,
    "restore_ratio_max": 1.2,
    "worker_process_rss_growth_mib": 64,
    "cut_skew_3_services_s": 0.1,
}


def fit(xs: Sequence[float], ys: Sequence[float]) -> dict[str, float] | None:
    """Least-squares line ``y = intercept + slope * x``; None with fewer than two x values."""
    if len(set(xs)) < 2:
        return None
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return {"slope": slope, "intercept": my - slope * mx, "points": n}


def _series(rows: list[dict[str, Any]], pick: Any, x: Any, y: Any) -> dict[str, float] | None:
    chosen = [r for r in rows if pick(r)]
    return fit([x(r) for r in chosen], [y(r) for r in chosen])


def _plain(row: dict[str, Any]) -> bool:
    """Random memory, stored uncompressed: the scenarios the scaling fits are made of."""
    return bool(row["spec"]["content"] == "random" and not row["spec"]["compress"])


def fits(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Slopes: seconds per MB (and MB/s) for one service; seconds per service at 64 MiB."""
    out: dict[str, Any] = {}
    one = lambda r: r["spec"]["services"] == 1 and _plain(r)  # noqa: E731
    per64 = lambda r: r["spec"]["mib"] == 64 and _plain(r)  # noqa: E731
    measures = {
        "podchord_evict": lambda r: r["podchord"]["evict_s"],
        "baseline_evict": lambda r: r["baseline"]["evict_s"],
        "podchord_restore": lambda r: r["podchord"]["restore_s"],
        "baseline_restore": lambda r: r["baseline"]["restore_s"],
    }
    for name, y in measures.items():
        f = _series(rows, one, lambda r: r["archive_bytes"] / 1e6, y)
        if f is not None:
            out[f"{name}_vs_size"] = {
                "s_per_mb": round(f["slope"], 5),
                "mb_per_s": round(1 / f["slope"], 1) if f["slope"] > 0 else None,
                "fixed_s": round(f["intercept"], 3),
                "points": f["points"],
            }
        g = _series(rows, per64, lambda r: r["spec"]["services"], y)
        if g is not None:
            out[f"{name}_vs_services"] = {
                "s_per_service": round(g["slope"], 3),
                "fixed_s": round(g["intercept"], 3),
                "points": g["points"],
            }
    return out


def targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets, judged on this run's measurements (None: not measured)."""
    big = [r for r in rows if (r["spec"]["services"], r["spec"]["mib"]) == (3, 256)]
    three = [r for r in rows if r["spec"]["services"] == 3]
    values = {
        "evict_ratio_3x256": max((r["ratios"]["evict"] for r in big), default=None),
        "restore_ratio_max": max((r["ratios"]["restore"] for r in rows), default=None),
        "worker_process_rss_growth_mib": max(
            (
                max(
                    r["podchord"]["worker_rss"]["max_process_growth_bytes"],
                    r["podchord"]["restore_worker_rss"]["max_process_growth_bytes"],
                )
                / MiB
                for r in rows
            ),
            default=None,
        ),
        "cut_skew_3_services_s": max((r["podchord"]["cut_skew_s"] for r in three), default=None),
    }
    return {
        k: {
            "value": None if v is None else round(v, 3),
            "limit": TARGETS[k],
            "met": None if v is None else v <= TARGETS[k],
        }
        for k, v in values.items()
    }


def table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table, one line per scenario."""
    head = (
        "| scenario | archive MB | podchord evict s | baseline evict s | ratio "
        "| podchord restore s | baseline restore s | ratio | cut skew ms (podchord / baseline) "
        "| worker RSS growth MiB (process / tree) | load 1m |"
    )
    lines = [head, "|" + " --- |" * 11]
    for r in rows:
        pc, bl = r["podchord"], r["baseline"]
        rss = pc["worker_rss"]
        tree = max(rss["tree_growth_bytes"].values(), default=0)
        stored = ""
        if pc["stored_bytes"] != pc["raw_bytes"]:
            stored = f" (stored {pc['stored_bytes'] / 1e6:.0f})"
        lines.append(
            f"| {r['spec']['name']} | {r['archive_bytes'] / 1e6:.0f}{stored} "
            f"| {pc['evict_s']:.2f} | {bl['evict_s']:.2f} | {r['ratios']['evict']:.2f} "
            f"| {pc['restore_s']:.2f} | {bl['restore_s']:.2f} | {r['ratios']['restore']:.2f} "
            f"| {pc['cut_skew_s'] * 1000:.0f} / {bl['cut_skew_s'] * 1000:.0f} "
            f"| {rss['max_process_growth_bytes'] / MiB:.1f} / {tree / MiB:.1f} "
            f"| {r['load_before'][0]:.2f} |"
        )
    return "\n".join(lines)


def markdown(doc: dict[str, Any]) -> str:
    """The results section of docs/benchmarks.md, generated from one run's JSON."""
    m, lim = doc["machine"], doc["limits"]
    pk = m.get("packages", {})
    out = [
        f"Run {doc['started_at']} (preset `{doc['preset']}`, {doc['duration_s']:.0f} s), "
        f"load average 1/5/15 min at start {_load(doc['load_start'])}, at end "
        f"{_load(doc['load_end'])}. Machine: {m['cpus']} cores ({m['cpu_model']}), "
        f"{m['memory_bytes'] / 2**30:.0f} GiB, Linux {m['kernel']}, Python {m['python']}, "
        f"Podman {m['podman']}, CRIU {pk.get('criu', '?')}, runc {pk.get('runc', '?')}; "
        f"workers with {doc['worker_concurrency']} prefork children each. Restore times: "
        f"the median of {doc.get('restore_rounds', 1)} podchord/baseline pair(s) per scenario.",
        "",
        table(doc["scenarios"]),
        "",
        "Targets (this run): "
        + "; ".join(
            f"{k} = {v['value']} (limit {v['limit']}: {'met' if v['met'] else 'NOT met'})"
            for k, v in doc["targets"].items()
        ),
        "",
        "Fits (least squares over this run's scenarios):",
        "",
    ]
    for k, v in doc["fits"].items():
        if "mb_per_s" in v:
            out.append(
                f"- {k}: {v['s_per_mb'] * 1000:.1f} ms/MB = {v['mb_per_s']} MB/s, "
                f"fixed {v['fixed_s']} s ({v['points']} points)"
            )
        else:
            out.append(
                f"- {k}: {v['s_per_service']} s per service, fixed {v['fixed_s']} s "
                f"({v['points']} points)"
            )
    out += [
        "",
        f"Limits measured in the same run ({lim['probe_bytes'] / 1e6:.0f} MB probes): disk "
        f"write with fdatasync {lim['disk_write_mb_s']} MB/s, memory copy "
        f"{lim['memory_copy_gb_s']} GB/s, S3 (moto) upload_fileobj "
        f"{lim['s3_upload_fileobj_mb_s']} MB/s, get_object {lim['s3_get_object_mb_s']} MB/s, "
        f"download_file {lim['s3_download_file_mb_s']} MB/s.",
    ]
    return "\n".join(out)


def _load(values: Sequence[float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values)
