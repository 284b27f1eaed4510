"""The CLI contract: output lines, exit codes, refusals — run as a real subprocess."""

from __future__ import annotations

from pathlib import Path

from tests.cli import lines_starting, safeops
from tests.conftest import MEDUSA_TABLES
from tests.pg import table_checksums


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
