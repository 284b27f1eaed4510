"""Medians, targets, the printed table and the chart of a benchmark run."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from bench.jobs import jobs_table, plot_jobs
from bench.stages import STAGES, Measurement

RATIO_TARGETS = {  # stage: (limit, what the ratio is taken against)
    "snapshot": (1.3, "baseline"),
    "verify": (1.5, "our snapshot"),
    "purge": (1.2, "baseline"),
    "restore": (2.0, "baseline"),
    "reset": (1.2, "baseline"),
}
RSS_LIMIT_MB = 200.0
RSS_GROWTH_LIMIT = 1.2
TASK_RUN_LIMIT = 20
RESET_SEO_ROWS = 100_000  # the reset target is about a site with this many SEO rows


def summarize(measurements: list[Measurement]) -> dict[str, Any]:
    """Per stage and variant: median seconds (and every run), peak RSS (max over runs)."""
    out: dict[str, Any] = {}
    for stage in STAGES:
        row: dict[str, Any] = {}
        for variant in ("ours", "baseline"):
            ms = [m for m in measurements if m.stage == stage and m.variant == variant]
            if not ms:
                continue
            row[variant] = {
                "seconds": statistics.median(m.seconds for m in ms),
                "runs": [round(m.seconds, 4) for m in ms],
                "peak_rss_mb": round(max(m.peak_rss_mb for m in ms), 1),
                "rss_start_mb": round(statistics.median(m.rss_start_mb for m in ms), 1),
            }
        if "ours" in row and "baseline" in row and row["baseline"]["seconds"] > 0:
            row["ratio"] = row["ours"]["seconds"] / row["baseline"]["seconds"]
        out[stage] = row
    snap = out.get("snapshot", {}).get("ours", {}).get("seconds")
    if snap and "ours" in out.get("verify", {}):
        out["verify"]["ratio_to_snapshot"] = out["verify"]["ours"]["seconds"] / snap
    return out


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target of the issue, at every size it applies to, met or not."""
    checks: list[dict[str, Any]] = []
    sizes = sorted(results["sizes"], key=int)
    for size in sizes:
        entry = results["sizes"][size]
        stages = entry["stages"]
        for stage, (limit, against) in RATIO_TARGETS.items():
            row = stages.get(stage, {})
            value = row.get("ratio_to_snapshot" if stage == "verify" else "ratio")
            if value is None:
                continue
            applies = True
            if stage == "reset":
                applies = entry["data"]["cms"]["seo_rows_reset_deletes"] >= RESET_SEO_ROWS * 0.99
            checks.append(
                {
                    "size": int(size),
                    "target": f"{stage} ≤ {limit}x {against}",
                    "value": round(value, 2),
                    "limit": limit,
                    "met": value <= limit,
                    "applies": applies,
                }
            )
        for stage in STAGES:
            peak = stages.get(stage, {}).get("ours", {}).get("peak_rss_mb")
            if peak is None:
                continue
            if int(size) >= 1_000_000:
                checks.append(
                    {
                        "size": int(size),
                        "target": f"{stage} peak RSS ≤ {RSS_LIMIT_MB:.0f} MB",
                        "value": peak,
                        "limit": RSS_LIMIT_MB,
                        "met": peak <= RSS_LIMIT_MB,
                        "applies": True,
                    }
                )
                ref = (
                    results["sizes"]
                    .get(str(int(size) // 10), {})
                    .get("stages", {})
                    .get(stage, {})
                    .get("ours", {})
                    .get("peak_rss_mb")
                )
                if ref:
                    growth = peak / ref
                    checks.append(
                        {
                            "size": int(size),
                            "target": f"{stage} peak RSS ≤ {RSS_GROWTH_LIMIT}x at 100k",
                            "value": round(growth, 2),
                            "limit": RSS_GROWTH_LIMIT,
                            "met": growth <= RSS_GROWTH_LIMIT,
                            "applies": True,
                        }
                    )
        for flow, info in entry.get("flows", {}).items():
            checks.append(
                {
                    "size": int(size),
                    "target": f"{flow}: ≤ {TASK_RUN_LIMIT} task runs",
                    "value": info["task_runs"],
                    "limit": TASK_RUN_LIMIT,
                    "met": 0 < info["task_runs"] <= TASK_RUN_LIMIT,
                    "applies": True,
                }
            )
    return checks


def _fmt_s(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def table(results: dict[str, Any]) -> str:
    """Markdown tables: times and ratios, peak RSS, task runs per flow."""
    sizes = sorted(results["sizes"], key=int)
    verdicts = {
        (c["size"], c["target"].split(" ")[0]): c
        for c in results["targets"]
        if "RSS" not in c["target"] and "task runs" not in c["target"]
    }
    lines = [
        "| images | stage | ours (s) | baseline (s) | ratio | target | met |",
        "|---:|---|---:|---:|---:|---|:---:|",
    ]
    for size in sizes:
        stages = results["sizes"][size]["stages"]
        for stage in STAGES:
            row = stages.get(stage)
            if not row:
                continue
            limit, against = RATIO_TARGETS[stage]
            ratio = row.get("ratio")
            shown = f"{ratio:.2f}x" if ratio is not None else "-"
            target = f"≤ {limit}x {against}"
            if stage == "verify" and "ratio_to_snapshot" in row:
                shown = f"{row['ratio_to_snapshot']:.2f}x snap ({ratio:.2f}x base)"
            if stage == "reset":
                seo = results["sizes"][size]["data"]["cms"]["seo_rows_reset_deletes"]
                target += f" ({seo:,} SEO rows)"
            c = verdicts.get((int(size), stage))
            met = "-" if c is None else ("✓" if c["met"] else "✗")
            if c is not None and not c["applies"]:
                met = f"({met})"
            lines.append(
                f"| {int(size):,} | {stage} | {_fmt_s(row.get('ours', {}).get('seconds'))}"
                f" | {_fmt_s(row.get('baseline', {}).get('seconds'))} | {shown} | "
                f"{target} | {met} |"
            )
    lines += [
        "",
        "Peak RSS of the stage's process in MB, ours (baseline); target ≤ 200 MB at 1M "
        "and ≤ 1.2x the 100k value:",
        "",
        "| images | " + " | ".join(STAGES) + " |",
        "|---:|" + "---:|" * len(STAGES),
    ]
    for size in sizes:
        stages = results["sizes"][size]["stages"]
        cells = []
        for stage in STAGES:
            ours = stages.get(stage, {}).get("ours", {}).get("peak_rss_mb")
            base = stages.get(stage, {}).get("baseline", {}).get("peak_rss_mb")
            cells.append("-" if ours is None else f"{ours:.0f} ({base:.0f})")
        lines.append(f"| {int(size):,} | " + " | ".join(cells) + " |")
    flows = sorted({f for s in sizes for f in results["sizes"][s].get("flows", {})})
    if flows:
        lines += [
            "",
            "Prefect task runs per flow run (wall time of the flow run); target ≤ 20:",
            "",
            "| flow | " + " | ".join(f"{int(s):,}" for s in sizes) + " |",
            "|---|" + "---:|" * len(sizes),
        ]
        for flow in flows:
            cells = []
            for size in sizes:
                info = results["sizes"][size].get("flows", {}).get(flow)
                cells.append(
                    "-" if info is None else f"{info['task_runs']} ({info['seconds']:.1f} s)"
                )
            lines.append(f"| {flow} | " + " | ".join(cells) + " |")
    jobs = jobs_table(results)
    if jobs:
        lines += ["", jobs]
    if "cli" in results:
        from bench.cli_times import table as cli_table

        lines += ["", cli_table(results["cli"])]
    return "\n".join(lines)


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(results["sizes"], key=int)
    fig, axes = plt.subplots(2, 4, figsize=(20, 8.5))
    for ax, stage in zip(axes.flat, STAGES, strict=False):
        xs, ours, base = [], [], []
        for size in sizes:
            row = results["sizes"][size]["stages"].get(stage, {})
            if "ours" not in row or "baseline" not in row:
                continue
            x = int(size)
            if stage == "reset":
                x = results["sizes"][size]["data"]["cms"]["seo_rows_reset_deletes"]
            xs.append(x)
            ours.append(row["ours"]["seconds"])
            base.append(row["baseline"]["seconds"])
        if not xs:  # a run of some stages only (--stages): leave the panel empty
            ax.set_title(f"{stage} (not run)")
            ax.set_axis_off()
            continue
        ax.plot(xs, ours, "o-", color="tab:blue", label="safeops")
        ax.plot(xs, base, "s--", color="tab:gray", label="raw SQL baseline")
        if stage == "verify":
            snap = [
                results["sizes"][s]["stages"].get("snapshot", {}).get("ours", {}).get("seconds")
                for s in sizes
            ]
            if all(v is not None for v in snap) and len(snap) == len(xs):
                ax.plot(xs, snap, ":", color="tab:orange", label="safeops snapshot")
        limit, against = RATIO_TARGETS[stage]
        ax.set_title(f"{stage} (target ≤ {limit}x {against})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("SEO rows deleted" if stage == "reset" else "images")
        ax.set_ylabel("seconds (median)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes.flat[len(STAGES)]
    xs = [int(s) for s in sizes]
    for stage, color in zip(
        STAGES, ("tab:blue", "tab:green", "tab:red", "tab:purple", "tab:brown"), strict=True
    ):
        ys = [
            results["sizes"][s]["stages"].get(stage, {}).get("ours", {}).get("peak_rss_mb")
            for s in sizes
        ]
        if all(y is not None for y in ys):
            ax.plot(xs, ys, "o-", color=color, label=stage)
    ax.axhline(RSS_LIMIT_MB, color="black", linestyle="--", linewidth=1, label="200 MB")
    ax.set_xscale("log")
    ax.set_ylim(0, max(RSS_LIMIT_MB * 1.25, ax.get_ylim()[1]))
    ax.set_title("peak RSS of our stage's process")
    ax.set_xlabel("images")
    ax.set_ylabel("MB")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    plot_jobs(axes.flat[len(STAGES) + 1], results)
    for spare in axes.flat[len(STAGES) + 2 :]:
        spare.set_axis_off()
    machine = results.get("machine", {})
    fig.suptitle(
        f"safeops vs raw SQL — {machine.get('cpus', '?')} cores, "
        f"PostgreSQL {machine.get('postgres', '?')}, median of "
        f"{results['config']['reps']} run(s)",
        fontsize=12,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
