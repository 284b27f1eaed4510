"""The benchmark harness keeps working: a 10k smoke run, end to end, no timing asserts.

Benchmarks are not tests (their numbers live in bench/results.json); this only
proves that `python -m bench --smoke` still generates data, measures every
stage against its baseline, counts task runs and writes its files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench.stages import STAGES, VARIANTS

ROOT = Path(__file__).resolve().parent.parent


def test_smoke_run_measures_every_stage(pg_admin: str, tmp_path: Path) -> None:
    from prefect.settings import PREFECT_API_URL

    out = tmp_path / "results.json"
    # The session's Prefect harness counts the task runs: no second server to start.
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--smoke",
            "--out",
            str(out),
            "--admin-url",
            pg_admin,
            "--prefect-api-url",
            str(PREFECT_API_URL.value()),
        ],
        cwd=ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-4000:]

    results = json.loads(out.read_text())
    entry = results["sizes"]["10000"]
    assert entry["data"]["medusa"]["images"] == 10_000
    for stage in STAGES:
        for variant in VARIANTS:
            measured = entry["stages"][stage][variant]
            assert measured["seconds"] > 0, (stage, variant)
            assert measured["peak_rss_mb"] > 0, (stage, variant)
        assert entry["stages"][stage]["ratio"] > 0
    assert entry["flows"] and all(f["task_runs"] > 0 for f in entry["flows"].values())
    assert results["targets"]
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert "| 10,000 | snapshot |" in run.stdout
