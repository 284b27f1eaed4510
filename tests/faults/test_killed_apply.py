"""Faults 1 and 2: the apply's database connection or the whole CLI process dies in
the middle of the apply transaction, after some of its deletes ran.

A stall trigger parks the apply on its first row of a later DELETE (media: `image`,
after every variant link was deleted; site: `content`, after the SEO rows, term links
and tag parents went), then the test kills the backend or the process.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest

from flows.media_purge import purge_product_media
from flows.site_reset import reset_site_structure
from tests.cli import finish, start_cli
from tests.conftest import answer_approval, approve_as
from tests.faults.conftest import (
    States,
    install_stall,
    site_states,
    task_runs,
    terminate,
    wait_backend_gone,
    wait_for_stall,
)
from tests.pg import audit_rows

Cms = tuple[str, dict[str, str]]


def kill_backend_when_stalled(states: States) -> tuple[threading.Thread, dict[str, Any]]:
    """In the background: wait for the stall, check the state, terminate the backend,
    check the state again (the retry is at least a second away)."""
    seen: dict[str, Any] = {}

    def body() -> None:
        try:
            pid, query = wait_for_stall(states.url)
            seen["query"] = query
            seen["while_stalled"] = states.now()
            terminate(states.url, pid)
            wait_backend_gone(states.url, pid)
            seen["after_kill"] = states.now()
        except BaseException as exc:  # reported by the test
            seen["error"] = exc

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, seen


def test_purge_backend_terminated_mid_apply_rolls_back_and_the_retry_completes(
    medusa_url: str, exports: Path, media_states: States
) -> None:
    install_stall(medusa_url, "image", 60)
    killer, seen = kill_backend_when_stalled(media_states)
    with answer_approval(approve_as()) as approvals:
        result = purge_product_media(dry_run=False)
    killer.join(30)
    assert "error" not in seen, seen.get("error")
    assert seen["query"].lstrip().startswith("DELETE FROM image")  # links already deleted
    assert seen["while_stalled"] == seen["after_kill"] == "before"

    assert media_states.now() == "applied"
    plan = result.plan.counts
    assert result.applied == {k: plan[k] for k in result.applied} and plan["images"] > 100
    run_id = approvals[0]["flow_run_id"]
    (apply_run,) = task_runs(run_id, "apply-media-purge")
    assert apply_run.run_count == 2 and apply_run.state.is_completed()  # retried once
    assert [r[0] for r in audit_rows(medusa_url)] == [run_id]  # one apply, one audit row


def test_site_reset_backend_terminated_mid_apply_rolls_back_and_the_retry_completes(
    cms: Cms, exports: Path
) -> None:
    url, sites = cms
    states = site_states(url, sites["atelier"])
    install_stall(url, "content", 60)
    killer, seen = kill_backend_when_stalled(states)
    with answer_approval(approve_as()) as approvals:
        result = reset_site_structure(sites["atelier"], dry_run=False)
    killer.join(30)
    assert "error" not in seen, seen.get("error")
    # Stalled in the page delete (which returns its rows' digest): SEO rows already gone.
    assert "(DELETE FROM content t WHERE" in seen["query"]
    assert seen["while_stalled"] == seen["after_kill"] == "before"

    assert states.now() == "applied"
    assert result.applied["categories"] == 4 and result.applied["seo_entries"] == 9
    run_id = approvals[0]["flow_run_id"]
    (apply_run,) = task_runs(run_id, "apply-site-reset")
    assert apply_run.run_count == 2 and apply_run.state.is_completed()
    assert [r[0] for r in audit_rows(url)] == [run_id]


def sigkill_cli_when_stalled(states: States, *args: str) -> dict[str, Any]:
    proc = start_cli(*args)
    try:
        pid, query = wait_for_stall(states.url, alive=lambda: proc.poll() is None)
        killed_at = states.now()
        os.killpg(proc.pid, signal.SIGKILL)
        code, out, _ = finish(proc, 30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    # The backend notices its client is gone within a second (client_connection_check_interval).
    wait_backend_gone(states.url, pid)
    return {
        "query": query,
        "killed_at": killed_at,
        "code": code,
        "stdout": out,
        "after_death": states.now(),
    }


def rerun(url: str, fn: Any, timeout_s: float = 120) -> Any:
    """Run the same job again, in this process; the killed run's slot (an advisory lock
    on its own connection) died with it, so nothing is left to wait for."""
    from tests.faults.conftest import slot_locks

    assert slot_locks(url) == []  # what the killed run left behind: nothing
    outcome: dict[str, Any] = {}

    def body() -> None:
        try:
            with answer_approval(approve_as()):
                outcome["value"] = fn()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    thread.join(timeout_s)
    assert not thread.is_alive(), f"the re-run still runs after {timeout_s} s"
    if "error" in outcome:
        raise outcome["error"]
    assert slot_locks(url) == []
    return outcome["value"]


def test_purge_cli_sigkilled_mid_apply_changes_nothing_and_a_rerun_completes(
    medusa_url: str, exports: Path, media_states: States
) -> None:
    install_stall(medusa_url, "image", 3)
    killed = sigkill_cli_when_stalled(media_states, "media", "purge", "--live", "--yes")
    assert killed["code"] == -signal.SIGKILL
    assert killed["query"].lstrip().startswith("DELETE FROM image")
    assert killed["killed_at"] == killed["after_death"] == "before"
    assert audit_rows(medusa_url) == []

    result = rerun(medusa_url, lambda: purge_product_media(dry_run=False))
    assert result.applied["images"] > 100
    assert media_states.now() == "applied"
    assert len(audit_rows(medusa_url)) == 1


def test_site_reset_cli_sigkilled_mid_apply_changes_nothing_and_a_rerun_completes(
    cms: Cms, exports: Path
) -> None:
    url, sites = cms
    states = site_states(url, sites["atelier"])
    install_stall(url, "content", 3)
    args = ("site", "reset", sites["atelier"], "--live", "--yes")
    killed = sigkill_cli_when_stalled(states, *args)
    assert killed["code"] == -signal.SIGKILL
    assert "(DELETE FROM content t WHERE" in killed["query"]  # the page delete
    assert killed["killed_at"] == killed["after_death"] == "before"
    assert audit_rows(url) == []

    result = rerun(url, lambda: reset_site_structure(sites["atelier"], dry_run=False))
    assert result.applied["categories"] == 4
    assert states.now() == "applied"
    assert len(audit_rows(url)) == 1


# ---------------------------------------------------------------- the lost acknowledgement


def lose_the_first_commit_ack(monkeypatch: pytest.MonkeyPatch, module: Any) -> list[str]:
    """The COMMIT after the apply's audit row reaches the server and commits, then the
    client sees the connection drop (as when the network fails during the ack)."""
    import psycopg

    import tasks.common.audit

    armed: list[str] = []
    real_commit = psycopg.Connection.commit

    def write_audit(*args: Any, **kwargs: Any) -> int:
        armed.append("armed")
        return tasks.common.audit.write_audit(*args, **kwargs)

    def commit(self: psycopg.Connection[Any]) -> None:
        real_commit(self)
        if armed == ["armed"]:
            armed.append("lost")
            raise psycopg.OperationalError(
                "consuming input failed: server closed the "
                "connection unexpectedly (injected after COMMIT)"
            )

    monkeypatch.setattr(module, "write_audit", write_audit)
    monkeypatch.setattr(psycopg.Connection, "commit", commit)
    return armed


def test_purge_whose_commit_ack_is_lost_reports_its_own_audit_counts(
    medusa_url: str, exports: Path, media_states: States, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tasks.media.purge

    armed = lose_the_first_commit_ack(monkeypatch, tasks.media.purge)
    with answer_approval(approve_as()) as approvals:
        result = purge_product_media(dry_run=False)
    assert armed == ["armed", "lost"]  # the retry found the audit row, wrote no second one
    plan = result.plan.counts
    assert result.applied == {
        k: plan[k] for k in ("images", "variant_links", "product_thumbnails", "variant_thumbnails")
    }
    assert media_states.now() == "applied"
    assert [r[0] for r in audit_rows(medusa_url)] == [approvals[0]["flow_run_id"]]
    (apply_run,) = task_runs(approvals[0]["flow_run_id"], "apply-media-purge")
    assert apply_run.run_count == 2 and apply_run.state.is_completed()


def test_site_reset_whose_commit_ack_is_lost_reports_its_own_audit_counts(
    cms: Cms, exports: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tasks.site.reset

    url, sites = cms
    states = site_states(url, sites["atelier"])
    armed = lose_the_first_commit_ack(monkeypatch, tasks.site.reset)
    with answer_approval(approve_as()) as approvals:
        result = reset_site_structure(sites["atelier"], dry_run=False)
    assert armed == ["armed", "lost"]
    assert result.applied == {
        "categories": 4,
        "authors": 2,
        "pages": 3,
        "content_types": 2,
        "seo_entries": 9,
        "term_links": 5,
    }
    assert states.now() == "applied"
    assert [r[0] for r in audit_rows(url)] == [approvals[0]["flow_run_id"]]
