"""The user's view: whole jobs against the raw procedure each replaces, timed in one run.

Users do not run stages, they run flows and commands. Per size this adds
``jobs`` to the results, each ``{ours_s, raw_s, ratio}``:

- ``purge_live``: the purge flow run through Prefect with a saved plan, against the
  raw procedure (snapshot ``COPY`` + ``sql/purge-product-media.sql``);
- ``purge_dry_run``: the purge flow's dry run, against the snapshot ``COPY``;
- ``restore_live``: the restore flow with a saved plan, against ``COPY FROM``;
- ``reset_live``: the site reset flow with a saved plan, against the raw ``DELETE``s;
- ``snapshot_cli``: ``safeops media snapshot`` as a user runs it (a process of its
  own, Prefect included), against ``pg_dump -Fc -Z0`` of the four media tables.

Ours are the wall times of the flow runs ``stages.count_task_runs`` makes (one
each), what a caller waits for; ``recorded_s`` beside them is the run as Prefect
records it (start to final state), without the engine's join of its heartbeat
thread, which sleeps in whole seconds and so rounds every synchronous flow run up
to the next second. Raw are the stage baselines' procedures run once more, just
before the flows and from the same state (``stages.time_raw_procedures``: the
catalog and site as generated), so one machine and data state prices both sides.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.stages import ROOT

# job: (flow run counted by stages.count_task_runs, stage baselines that add up to raw)
JOBS: dict[str, tuple[str, tuple[str, ...]]] = {
    "purge_live": ("purge-product-media (live)", ("snapshot", "purge")),
    "purge_dry_run": ("purge-product-media (dry run)", ("snapshot",)),
    "restore_live": ("restore-product-media (live)", ("restore",)),
    "reset_live": ("reset-site-structure (live)", ("reset",)),
}
# The targets at 1M images (a ratio to the raw procedure), shown beside the figures.
JOB_TARGETS = {
    "purge_live": 1.6,
    "purge_dry_run": 2.0,
    "restore_live": 1.8,
    "reset_live": 2.0,
    "snapshot_cli": 2.0,
}
PG_DUMP_TABLES = ("image", "product_variant_product_image", "product", "product_variant")


def _job(ours: float | None, raw: float | None) -> dict[str, Any]:
    ratio = ours / raw if ours is not None and raw else None
    return {
        "ours_s": None if ours is None else round(ours, 3),
        "raw_s": None if raw is None else round(raw, 3),
        "ratio": None if ratio is None else round(ratio, 2),
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def jobs_of(entry: dict[str, Any]) -> dict[str, Any]:
    """The four flow jobs of one size, from its flow runs and the raw procedures timed
    beside them (``raw_procedures``; older results: the stage baselines)."""
    out: dict[str, Any] = {}
    flows, stages = entry.get("flows", {}), entry.get("stages", {})
    beside = entry.get("raw_procedures")
    for job, (flow, baselines) in JOBS.items():
        ours = flows.get(flow, {}).get("seconds")
        parts = [
            beside.get(s)
            if beside is not None
            else stages.get(s, {}).get("baseline", {}).get("seconds")
            for s in baselines
        ]
        raw = None if None in parts else sum(p for p in parts if p is not None)
        out[job] = _job(ours, raw)
        # The flow run's own duration as Prefect records it: without the heartbeat join.
        recorded = flows.get(flow, {}).get("recorded_seconds")
        out[job]["recorded_s"] = recorded
        out[job]["recorded_ratio"] = _rounded(recorded / raw if recorded and raw else None)
    return out


def _wall(cmd: list[str], env: dict[str, str], cwd: Path) -> float:
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=3600)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-10:])
        raise RuntimeError(f"{cmd[0]} … failed (exit {proc.returncode}):\n{tail}")
    return seconds


def snapshot_cli(env: dict[str, str], medusa_url: str, workdir: Path, reps: int) -> dict[str, Any]:
    """Median wall time of ``safeops media snapshot`` (a fresh process each time, the way
    a user runs it) beside ``pg_dump -Fc -Z0`` of the four tables, alternating the order.

    The CLI runs with the bench's environment: its own ``PREFECT_HOME``, and the
    operator's ``PREFECT_API_URL`` only if the bench was given one."""
    out_dir = workdir / "cli-snapshots"
    out_dir.mkdir(parents=True, exist_ok=True)
    script = Path(sys.executable).with_name("safeops")  # the console script users run
    entry = [str(script)] if script.exists() else [sys.executable, "-m", "safeops.cli"]
    cli = [*entry, "media", "snapshot", "--to", str(out_dir)]
    # The local Prefect server the CLI starts (no PREFECT_API_URL) lives in a home of the
    # bench's own and is stopped at the end: a bench never leaves the machine's server
    # (~/.safeops) running, nor reuses one from another state.
    env = {**env, "SAFEOPS_HOME": str(workdir / "safeops-home")}
    try:
        ours, raw = _snapshot_runs(cli, env, medusa_url, workdir, out_dir, reps)
    finally:
        subprocess.run([*entry, "server", "stop"], env=env, cwd=ROOT, capture_output=True)
    result = _job(
        statistics.median(ours) if ours else None, statistics.median(raw) if raw else None
    )
    result["runs"] = {"ours": [round(s, 3) for s in ours], "raw": [round(s, 3) for s in raw]}
    return result


def _snapshot_runs(
    cli: list[str], env: dict[str, str], medusa_url: str, workdir: Path, out_dir: Path, reps: int
) -> tuple[list[float], list[float]]:
    pg_dump = shutil.which("pg_dump")
    dump = workdir / "media-tables.dump"
    ours: list[float] = []
    raw: list[float] = []
    for rep in range(max(reps, 1)):
        order = ("ours", "raw") if rep % 2 == 0 else ("raw", "ours")
        for side in order:
            if side == "ours":
                ours.append(_wall(cli, env, ROOT))
                for f in out_dir.iterdir():
                    f.unlink()
            elif pg_dump is not None:
                tables = [a for t in PG_DUMP_TABLES for a in ("-t", t)]
                cmd = [pg_dump, "-Fc", "-Z0", *tables, "-f", str(dump), "-d", medusa_url]
                raw.append(_wall(cmd, dict(os.environ), workdir))
                dump.unlink(missing_ok=True)
    return ours, raw


def jobs_table(results: dict[str, Any]) -> str:
    """Markdown: each job's wall time beside its raw procedure, per size."""
    sizes = sorted(results["sizes"], key=int)
    if not any(results["sizes"][s].get("jobs") for s in sizes):
        return ""
    lines = [
        "Whole jobs as users run them (flows through Prefect with a saved plan; "
        "`safeops media snapshot` as a process) against the raw procedure timed in the "
        "same run; target at 1M:",
        "",
        "| images | job | ours (s) | raw (s) | ratio | as Prefect records the run | target (1M) |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for size in sizes:
        for job, row in results["sizes"][size].get("jobs", {}).items():
            ratio, recorded = row.get("ratio"), row.get("recorded_s")
            lines.append(
                f"| {int(size):,} | {job} | {_s(row.get('ours_s'))} | {_s(row.get('raw_s'))} "
                f"| {'-' if ratio is None else f'{ratio:.2f}x'} | "
                + (
                    "-"
                    if recorded is None
                    else f"{_s(recorded)} s ({row.get('recorded_ratio') or 0:.2f}x)"
                )
                + f" | ≤ {JOB_TARGETS[job]}x |"
            )
    return "\n".join(lines)


def _s(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def plot_jobs(ax: Any, results: dict[str, Any]) -> None:
    """One chart panel: each job's ratio to its raw procedure, by size."""
    sizes = sorted(results["sizes"], key=int)
    for job in JOB_TARGETS:
        xs, ys = [], []
        for size in sizes:
            ratio = results["sizes"][size].get("jobs", {}).get(job, {}).get("ratio")
            if ratio is not None:
                xs.append(int(size))
                ys.append(ratio)
        if xs:
            ax.plot(xs, ys, "o-", label=f"{job} (≤ {JOB_TARGETS[job]}x)")
    ax.axhline(1.0, color="black", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_yscale("log")  # the CLI's start-up dwarfs the flows' ratios otherwise
    ax.set_title("whole jobs: ours / raw procedure")
    ax.set_xlabel("images")
    ax.set_ylabel("ratio")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
