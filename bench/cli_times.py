"""What a user waits for at the terminal (issue 13, item 4: the ``cli`` object).

Two commands, each timed cold and warm, each beside the reference it is judged by:

- ``safeops media purge`` (dry run) on a ~1k-image catalog, beside
  ``python -c "import prefect"`` (target: warm within 2x);
- a configuration error, ``safeops site check <uuid>`` with ``CMS_DATABASE_URL``
  unset, beside ``safeops --help`` (target: within 1.5x).

Cold: no local Prefect server runs (the purge starts one; it is stopped before each
cold repetition). Warm: the server is up. Every command is a fresh process (the
``safeops`` console script, as a user runs it), median of the repetitions, in a
SAFEOPS_HOME of its own whose server is stopped at the end.

    uv run python -m bench.cli_times --reps 5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import generate as gen
from bench.stages import clean_environment

ROOT = Path(__file__).resolve().parent.parent
CATALOG_IMAGES = 1000
TARGETS = {"purge_dry_run": 2.0, "config_error": 1.5}


def _safeops() -> list[str]:
    """The console script beside this interpreter (what a user types), else ``-m``."""
    script = Path(sys.executable).with_name("safeops")
    return [str(script)] if script.exists() else [sys.executable, "-m", "safeops.cli"]


def _env(workdir: Path, medusa_url: str) -> dict[str, str]:
    """An operator with no Prefect API configured and only MEDUSA_DATABASE_URL set."""
    env = clean_environment()
    env.update(
        {
            "MEDUSA_DATABASE_URL": medusa_url,
            "SAFEOPS_SNAPSHOT_URI": str(workdir / "snapshots"),
            "SAFEOPS_HOME": str(workdir / "safeops-home"),
            "PREFECT_HOME": str(workdir / "prefect-home"),
        }
    )
    return env


def _timed(command: list[str], env: dict[str, str], cwd: Path, expect: int) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - started
    if done.returncode != expect:
        raise RuntimeError(
            f"{' '.join(command)} exited {done.returncode}, expected {expect}:\n"
            f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        )
    return seconds


def measure(admin_url: str, reps: int, log: Callable[[str], None]) -> dict[str, Any]:
    """The ``cli`` object of results.json."""
    workdir = Path(tempfile.mkdtemp(prefix="safeops-bench-cli-"))
    safeops = _safeops()
    with gen.scratch_database(admin_url, "cli") as (_, medusa_url):
        generated = gen.generate_medusa(medusa_url, CATALOG_IMAGES)
        env = _env(workdir, medusa_url)
        purge = [*safeops, "media", "purge"]
        config_error = [*safeops, "site", "check", str(uuid.uuid4())]
        stop = [*safeops, "server", "stop"]
        times: dict[str, list[float]] = {
            k: []
            for k in (
                "purge_cold",
                "purge_warm",
                "config_cold",
                "config_warm",
                "import_prefect",
                "help",
            )
        }
        try:
            for rep in range(reps):
                log(f"  cli rep {rep + 1}/{reps}")
                _timed(stop, env, workdir, 0)
                times["config_cold"].append(_timed(config_error, env, workdir, 2))
                times["purge_cold"].append(_timed(purge, env, workdir, 0))
                times["purge_warm"].append(_timed(purge, env, workdir, 0))
                times["config_warm"].append(_timed(config_error, env, workdir, 2))
                times["import_prefect"].append(
                    _timed([sys.executable, "-c", "import prefect"], env, workdir, 0)
                )
                times["help"].append(_timed([*safeops, "--help"], env, workdir, 0))
        finally:
            subprocess.run(stop, env=env, cwd=workdir, capture_output=True, timeout=120)
            shutil.rmtree(workdir, ignore_errors=True)
    median = {k: round(statistics.median(v), 3) for k, v in times.items()}

    def row(
        cold: str, warm: str, reference: str, label: str, target: float, *, both: bool
    ) -> dict[str, Any]:
        """``both``: the target holds cold and warm (an error needs no server at all)."""
        ref = median[reference]
        judged = max(median[cold], median[warm]) if both else median[warm]
        return {
            "cold_s": median[cold],
            "warm_s": median[warm],
            "reference": label,
            "reference_s": ref,
            "cold_ratio": round(median[cold] / ref, 2),
            "warm_ratio": round(median[warm] / ref, 2),
            "target": f"{'cold and warm' if both else 'warm'} ≤ {target}x {label}",
            "met": judged / ref <= target,
        }

    return {
        "catalog_images": generated.counts.get("images", CATALOG_IMAGES),
        "reps": reps,
        "purge_dry_run": row(
            "purge_cold",
            "purge_warm",
            "import_prefect",
            'python -c "import prefect"',
            TARGETS["purge_dry_run"],
            both=False,
        ),
        "config_error": row(
            "config_cold",
            "config_warm",
            "help",
            "safeops --help",
            TARGETS["config_error"],
            both=True,
        ),
        "samples_s": {k: [round(x, 3) for x in v] for k, v in times.items()},
    }


def table(cli: dict[str, Any]) -> str:
    """The README's rows: each command cold and warm beside its reference."""
    lines = [
        f"CLI wall time on a {cli['catalog_images']:,}-image catalog (median of "
        f"{cli['reps']}; cold: no local Prefect server running, warm: it is up):",
        "",
        "| command | cold (s) | warm (s) | reference | reference (s) | ratio cold / warm "
        "| target | met |",
        "|---|---:|---:|---|---:|---:|---|:---:|",
    ]
    for name, label in (
        ("purge_dry_run", "`safeops media purge` (dry run)"),
        ("config_error", "config error (`site check`, CMS_DATABASE_URL unset)"),
    ):
        r = cli[name]
        lines.append(
            f"| {label} | {r['cold_s']:.2f} | {r['warm_s']:.2f} | {r['reference']} | "
            f"{r['reference_s']:.2f} | {r['cold_ratio']:.2f}x / {r['warm_ratio']:.2f}x | "
            f"{r['target']} | {'✓' if r['met'] else '✗'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cli_times", description=__doc__)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--admin-url", default=os.environ.get("SAFEOPS_BENCH_ADMIN_URL", gen.ADMIN_URL))
    p.add_argument("--out", type=Path, default=None, help="write the cli object as JSON here")
    args = p.parse_args(argv)
    cli = measure(args.admin_url, args.reps, lambda m: print(m, file=sys.stderr, flush=True))
    if args.out:
        args.out.write_text(json.dumps(cli, indent=2, ensure_ascii=False) + "\n")
    print(table(cli))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
