"""Faults 5 and 7 through the CLI: the database moves while the run waits for its
approval, and approvals that are refused, at the exit codes DESIGN.md promises.

Covered elsewhere (flows, not repeated): an image added or removed during the pause
(tests/test_media_safety.py), a post published during the pause or while the apply
waits on its locks (tests/site/test_site_reset_safety.py), rejection, wrong confirmation,
timeout and the allowlist for both flows, and `--live` without a terminal (exit 4,
tests/test_cli.py).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.cli import cli
from tests.conftest import CMS_TABLES, MEDUSA_TABLES
from tests.faults.conftest import checksums, on_event
from tests.pg import audit_rows, execute, scalar

Cms = tuple[str, dict[str, str]]


# ---------------------------------------------------------------- 5. drift during the pause


def test_product_deleted_during_the_pause_is_refused_as_drift(
    medusa_url: str, exports: Path
) -> None:
    product = str(
        scalar(
            medusa_url,
            "SELECT product_id FROM image GROUP BY product_id "
            "ORDER BY count(*) DESC, product_id LIMIT 1",
        )
    )
    images = int(scalar(medusa_url, "SELECT count(*) FROM image WHERE product_id = %s", product))  # type: ignore[call-overload]
    during: dict[str, str] = {}

    def delete_product(_: dict[str, Any]) -> None:
        execute(medusa_url, "DELETE FROM product WHERE id = %s", product)  # cascades
        during.update(checksums(medusa_url, MEDUSA_TABLES))

    with on_event("approval", delete_product):
        run = cli("media", "purge", "--live", "--yes")
    assert run.code == 3, run
    line = run.error_line
    assert "drift since snapshot" in line and f"image: {images} missing from the database" in line
    assert "nothing changed" in line
    assert checksums(medusa_url, MEDUSA_TABLES) == during  # only the product went
    assert audit_rows(medusa_url) == []


def reset_with_a_change_during_the_pause(
    url: str, site: str, sql: str
) -> tuple[Any, dict[str, str]]:
    """`safeops site reset --live --yes` whose approval pause first runs ``sql`` (over
    the site's id): the CLI run, and the tables as that change left them."""
    during: dict[str, str] = {}

    def change(_: dict[str, Any]) -> None:
        execute(url, sql, site)
        during.update(checksums(url, CMS_TABLES))

    with on_event("approval", change):
        run = cli("site", "reset", site, "--live", "--yes")
    return run, during


def test_category_added_during_the_pause_is_refused_as_drift(cms: Cms, exports: Path) -> None:
    url, sites = cms
    run, during = reset_with_a_change_during_the_pause(
        url,
        sites["atelier"],
        "INSERT INTO terms (site_id, type, name, slug) VALUES (%s, 'category', 'Late', 'late')",
    )
    assert run.code == 3, run
    line = run.error_line
    assert "structure changed since it was approved" in line and "categories=5" in line
    assert checksums(url, CMS_TABLES) == during
    assert audit_rows(url) == []


def test_page_edited_during_the_pause_is_refused_as_drift(cms: Cms, exports: Path) -> None:
    """Same rows, same counts, one title edited: the pages the apply deletes no longer
    hash to the approved plan, so the deletes roll back."""
    url, sites = cms
    run, during = reset_with_a_change_during_the_pause(
        url,
        sites["atelier"],
        "UPDATE content SET title = title || ' (edited)' "
        "WHERE site_id = %s AND type = 'page' AND slug = 'about'",
    )
    assert run.code == 3, run
    line = run.error_line
    assert "structure changed since it was approved" in line and "pages=3" in line
    assert "nothing changed" in line
    assert checksums(url, CMS_TABLES) == during
    assert audit_rows(url) == []


# ---------------------------------------------------------------- 7. approvals at the CLI


def test_cli_approver_outside_the_allowlist_exits_4(
    medusa_url: str, exports: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SAFEOPS_APPROVERS", "bob,carol")
    monkeypatch.setenv("SAFEOPS_APPROVER", "mallory")
    before = checksums(medusa_url, MEDUSA_TABLES)
    run = cli("media", "purge", "--live", "--yes")
    assert run.code == 4, run
    assert "'mallory' is not in SAFEOPS_APPROVERS" in run.error_line
    assert checksums(medusa_url, MEDUSA_TABLES) == before
    assert audit_rows(medusa_url) == []


class SlowTerminal:
    """A person at the terminal who types ``line`` after ``delay_s`` seconds."""

    def __init__(self, line: str, delay_s: float = 0.0) -> None:
        self.line, self.delay_s = line, delay_s

    def __call__(self, prompt: str = "", **_: Any) -> str:
        time.sleep(self.delay_s)
        return self.line


def at_a_terminal(monkeypatch: pytest.MonkeyPatch, person: SlowTerminal) -> None:
    """As if stdin were a terminal (the runner's is a pipe) with ``person`` typing."""
    import safeops.console.runner

    monkeypatch.setattr(safeops.console.runner, "refuse_unattended", lambda *args: None)
    monkeypatch.setattr(safeops.console.runner.console, "input", person)


def test_cli_wrong_typed_confirmation_exits_4(
    cms: Cms, exports: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, sites = cms
    before = checksums(url, CMS_TABLES)
    at_a_terminal(monkeypatch, SlowTerminal("gazette"))
    run = cli("site", "reset", sites["atelier"], "--live")
    assert run.code == 4, run
    assert "typed confirmation did not match" in run.error_line
    assert checksums(url, CMS_TABLES) == before
    assert audit_rows(url) == []


def test_cli_approval_timeout_exits_4(
    medusa_url: str, exports: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nobody types before the deadline: the run times out; the late answer is ignored."""
    before = checksums(medusa_url, MEDUSA_TABLES)
    images = int(scalar(medusa_url, "SELECT count(*) FROM image"))  # type: ignore[call-overload]
    at_a_terminal(monkeypatch, SlowTerminal(f"PURGE {images} IMAGES", delay_s=4))
    run = cli("media", "purge", "--live", "--timeout", "1", "--reason", "late")
    assert run.code == 4, run
    assert "timed out after 1 s" in run.error_line
    assert checksums(medusa_url, MEDUSA_TABLES) == before
    assert audit_rows(medusa_url) == []
