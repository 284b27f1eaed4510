"""The CLI contract: output lines, exit codes, refusals — run as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import MEDUSA_TABLES
from tests.pg import table_checksums

ROOT = Path(__file__).resolve().parent.parent


def safeops(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None, timeout: int = 240
) -> subprocess.CompletedProcess[str]:
    """Run the CLI in its own process, against the test harness's Prefect API."""
    from prefect.settings import PREFECT_API_URL

    full_env = {**os.environ, **(env or {}), "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    return subprocess.run(
        [sys.executable, "-m", "safeops.cli", *args],
        cwd=ROOT,
        env=full_env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def lines_starting(output: str, prefix: str) -> list[str]:
    return [line[len(prefix) :] for line in output.splitlines() if line.startswith(prefix)]


def test_dry_run_prints_snapshot_and_plan_and_changes_nothing(
    medusa_url: str, exports: Path
) -> None:
    before = table_checksums(medusa_url, MEDUSA_TABLES)
    run = safeops("media", "purge")
    assert run.returncode == 0, run.stderr
    (uri,) = lines_starting(run.stdout, "snapshot: ")
    (plan,) = lines_starting(run.stdout, "plan: ")
    assert Path(uri).is_file() and len(plan) == 64
    assert table_checksums(medusa_url, MEDUSA_TABLES) == before

    # The saved plan is the approval: a live run with it applies without a prompt.
    live = safeops("media", "purge", "--live", "--plan", plan)
    assert live.returncode == 0, live.stderr
    assert lines_starting(live.stdout, "plan: ") == [plan]
    assert table_checksums(medusa_url, ["image"])["image"].startswith("0:")


def test_live_without_terminal_or_yes_is_refused_with_exit_4(
    medusa_url: str, exports: Path
) -> None:
    before = table_checksums(medusa_url, MEDUSA_TABLES)
    run = safeops("media", "purge", "--live", stdin="")
    assert run.returncode == 4
    assert "--yes" in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert table_checksums(medusa_url, MEDUSA_TABLES) == before
    assert not exports.exists() or not list(exports.iterdir())


def test_stale_plan_hash_is_refused_with_exit_3(medusa_url: str, exports: Path) -> None:
    before = table_checksums(medusa_url, MEDUSA_TABLES)
    run = safeops("media", "purge", "--live", "--plan", "0" * 64)
    assert run.returncode == 3, run.stderr
    assert "does not match" in run.stderr
    assert table_checksums(medusa_url, MEDUSA_TABLES) == before
