"""Benchmark safeops against raw SQL at catalog scale.

    uv run python -m bench                          # 10k, 100k, 1M images, 3 reps
    uv run python -m bench --sizes 10000,100000 --reps 5
    uv run python -m bench --smoke --out /tmp/r.json   # 10k, 1 rep (what CI runs)

For each size: generate a fresh Medusa catalog and CMS site in scratch
databases (``safeops_bench_*``, dropped afterwards), then for each stage and
repetition run ours and its raw-SQL baseline back to back (the order
alternating between repetitions), each in a fresh process; report medians,
peak RSS and the ratios against the issue's targets; run the real flows once
per size and count their task runs, and set each whole job (flow, CLI
snapshot) beside the raw procedure it replaces (``bench/jobs.py``). Writes
``bench/results.json`` and ``bench/results.png`` (or next to ``--out``) and
prints the tables.

Needs a PostgreSQL superuser (default ``postgresql://postgres@127.0.0.1:5432/
postgres``, or ``--admin-url`` / ``SAFEOPS_BENCH_ADMIN_URL``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from bench import cli_times
from bench import generate as gen
from bench.jobs import jobs_of, snapshot_cli
from bench.report import chart, evaluate, summarize, table
from bench.stages import (
    STAGES,
    VARIANTS,
    Measurement,
    Runner,
    count_task_runs,
    time_raw_procedures,
)

HERE = Path(__file__).resolve().parent


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--sizes",
        default="10000,100000,1000000",
        help="comma list of image counts (default 10000,100000,1000000)",
    )
    p.add_argument("--reps", type=int, default=3, help="repetitions per stage (median)")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="10k images, 1 repetition: keeps the harness working, times are noise",
    )
    p.add_argument("--stages", default=",".join(STAGES), help="comma list of stages to run")
    p.add_argument(
        "--seo-rows",
        type=int,
        default=None,
        help="SEO rows the reset deletes (default: images / 10, so 100k at 1M)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=HERE / "results.json",
        help="results file; the chart goes next to it as .png",
    )
    p.add_argument("--admin-url", default=os.environ.get("SAFEOPS_BENCH_ADMIN_URL", gen.ADMIN_URL))
    p.add_argument("--no-flows", action="store_true", help="skip counting task runs")
    p.add_argument(
        "--prefect-api-url",
        default=None,
        help="count task runs on this Prefect API instead of a private harness",
    )
    p.add_argument(
        "--profile", type=Path, default=None, help="folder for pyinstrument profiles of our stages"
    )
    p.add_argument("--keep-workdir", action="store_true")
    p.add_argument(
        "--no-cli", action="store_true", help="skip the CLI wall times (bench/cli_times.py)"
    )
    args = p.parse_args(argv)
    if args.smoke:
        args.sizes, args.reps, args.no_cli = "10000", 1, True
    return args


def machine_info(admin_url: str) -> dict[str, Any]:
    with psycopg.connect(admin_url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    import prefect

    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "prefect": prefect.__version__,
        "postgres": str(row[0]).split()[0] if row else "?",
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    stages = [s for s in args.stages.split(",") if s]
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise SystemExit(f"unknown stage(s): {', '.join(sorted(unknown))}")
    results: dict[str, Any] = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m bench " + " ".join(sys.argv[1:]),
        "config": {"sizes": sizes, "reps": args.reps, "smoke": args.smoke, "stages": stages},
        "machine": machine_info(args.admin_url),
        "sizes": {},
    }
    workroot = Path(tempfile.mkdtemp(prefix="safeops-bench-"))
    try:
        for size in sizes:
            seo_rows = args.seo_rows or max(size // 10, 30)
            log(f"== {size:,} images, {seo_rows:,} SEO rows")
            runner = Runner(args.admin_url, size, seo_rows, workroot / str(size), log, args.profile)
            started = time.perf_counter()
            try:
                runner.setup()
                measurements: list[Measurement] = []
                for rep in range(args.reps):
                    order = VARIANTS if rep % 2 == 0 else tuple(reversed(VARIANTS))
                    for stage in stages:
                        for variant in order:
                            measurements.append(runner.measure(stage, variant, rep))
                entry: dict[str, Any] = {"data": runner.data, "stages": summarize(measurements)}
                if not args.no_flows:
                    log("  timing the raw procedures the jobs replace, from the generated state")
                    entry["raw_procedures"] = time_raw_procedures(runner)
                    log("  counting task runs of the real flows")
                    entry["flows"] = count_task_runs(runner, args.prefect_api_url)
                    for flow, info in entry["flows"].items():
                        log(f"    {flow}: {info['task_runs']} task runs, {info['seconds']:.1f} s")
                    entry["jobs"] = jobs_of(entry)
                    log("  timing `safeops media snapshot` beside pg_dump")
                    env = dict(runner.env)
                    if args.prefect_api_url:
                        env["PREFECT_API_URL"] = args.prefect_api_url
                    entry["jobs"]["snapshot_cli"] = snapshot_cli(
                        env, runner.medusa_url, runner.workdir, args.reps
                    )
                    for job, row in entry["jobs"].items():
                        log(f"    {job}: {row['ours_s']} s vs raw {row['raw_s']} s")
                entry["seconds"] = round(time.perf_counter() - started, 1)
                results["sizes"][str(size)] = entry
            finally:
                runner.teardown()
    finally:
        if args.keep_workdir:
            log(f"work files kept in {workroot}")
        else:
            shutil.rmtree(workroot, ignore_errors=True)
    if not args.no_cli:
        log("== CLI wall times (bench/cli_times.py)")
        results["cli"] = cli_times.measure(args.admin_url, args.reps, log)
    results["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    results["targets"] = evaluate(results)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C: the running child is killed and every scratch
    # database is dropped by the finally blocks.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results = run(args)
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    chart(results, out.with_suffix(".png"))
    print(table(results))
    missed = [c for c in results["targets"] if c["applies"] and not c["met"]]
    print(
        f"\n{len(results['targets']) - len(missed)} of {len(results['targets'])} target "
        f"checks met; results in {out} and {out.with_suffix('.png')}"
    )
    for c in missed:
        print(f"  missed at {c['size']:,}: {c['target']} (got {c['value']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
