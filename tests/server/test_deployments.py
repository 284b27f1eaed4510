"""Today's flows, unchanged, run by a real Prefect server and worker."""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import CMS_TABLES, MEDUSA_TABLES
from tests.pg import scalar, table_checksums
from tests.server.conftest import PREFECT, Stack

pytestmark = pytest.mark.server
CHROMIUM = os.environ.get("SAFEOPS_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def run_deployment(stack: Stack, name: str, *params: str) -> str:
    args = [*PREFECT, "deployment", "run", name]
    for p in params:
        args += ["-p", p]
    out = stack.run(args)
    assert out.returncode == 0, out.stdout + out.stderr
    match = re.search(r"UUID:\s*([0-9a-f-]{36})", out.stdout)
    assert match, out.stdout
    return match.group(1)


def artifacts_of(stack: Stack, run_id: str) -> list[dict[str, object]]:
    return list(stack.api("POST", "/artifacts/filter",
                          json={"artifacts": {"flow_run_id": {"any_": [run_id]}}}))


def test_reset_approved_with_safeops_approve(stack: Stack) -> None:
    site = stack.sites["atelier"]
    run_id = run_deployment(stack, "reset-site-structure/manual", f"site_id={site}",
                            "dry_run=false")
    stack.wait_state(run_id, {"PAUSED"}, timeout=180)
    listed = stack.safeops("approvals")
    assert listed.returncode == 0, listed.stderr
    assert f"waiting: {run_id} reset-site-structure" in listed.stdout

    approved = stack.safeops("approve", run_id, "--approver", "alice", "--confirm", "atelier",
                             "--reason", "server test")
    assert approved.returncode == 0, approved.stderr
    assert stack.wait_state(run_id, {"COMPLETED", "FAILED", "CRASHED"}) == "COMPLETED"
    assert scalar(stack.cms_url, "SELECT count(*) FROM terms WHERE site_id = %s "
                                 "AND type = 'category'", site) == 0
    assert scalar(stack.cms_url, "SELECT approver FROM safeops.safeops_audit "
                                 "WHERE flow_run_id = %s", run_id) == "alice"
    deleted = next(a for a in artifacts_of(stack, run_id) if a["key"] == "site-reset-deleted")
    import json

    rows = json.loads(str(deleted["data"]))
    assert {r["what"]: r["deleted"] for r in rows}["categories"] == 4


def test_invalid_answer_is_refused_and_rejection_changes_nothing(stack: Stack) -> None:
    before = table_checksums(stack.medusa_url, MEDUSA_TABLES)
    run_id = run_deployment(stack, "purge-product-media/manual", "dry_run=false")
    stack.wait_state(run_id, {"PAUSED"}, timeout=180)

    empty = stack.safeops("approve", run_id, "--approver", "", "--confirm", "x")
    assert empty.returncode == 2 and "refused" in empty.stderr
    assert stack.flow_run(run_id)["state"]["type"] == "PAUSED"

    rejected = stack.safeops("reject", run_id, "--approver", "bob", "--reason", "not today")
    assert rejected.returncode == 0, rejected.stderr
    assert stack.wait_state(run_id, {"COMPLETED", "FAILED", "CRASHED"}) == "FAILED"
    assert table_checksums(stack.medusa_url, MEDUSA_TABLES) == before


@pytest.mark.skipif(not Path(CHROMIUM).exists(),
                    reason=f"{CHROMIUM} missing: `apt-get install chromium` (.ci/run does)")
def test_approval_in_the_prefect_ui_with_headless_chromium(stack: Stack) -> None:
    from playwright.sync_api import sync_playwright

    site = stack.sites["empty-site"]
    run_id = run_deployment(stack, "reset-site-structure/manual", f"site_id={site}",
                            "dry_run=false")
    stack.wait_state(run_id, {"PAUSED"}, timeout=180)
    ui = stack.api_url.removesuffix("/api")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{ui}/runs/flow-run/{run_id}")
            page.get_by_role("button", name="Resume").click()
            form = page.locator(".p-modal__card")
            form.get_by_text("empty-site").first.wait_for()
            for label, value in (("Approver", "carol"), ("Reason", "UI test"),
                                 ("Confirmation", "empty-site")):
                form.locator(".schema-form-property", has_text=label).locator(
                    "textarea").fill(value)
            form.screenshot(path=str(ARTIFACTS / "approval-form.png"))
            form.get_by_role("button", name="Submit").click()
            assert stack.wait_state(run_id, {"COMPLETED", "FAILED", "CRASHED"}) == "COMPLETED"
            page.reload()
            page.get_by_text("Completed").first.wait_for(timeout=30_000)
        finally:
            browser.close()
    assert scalar(stack.cms_url, "SELECT count(*) FROM authors WHERE site_id = %s", site) == 0
    assert scalar(stack.cms_url, "SELECT approver FROM safeops.safeops_audit "
                                 "WHERE flow_run_id = %s", run_id) == "carol"


def test_nightly_schedule_creates_scheduled_runs(stack: Stack) -> None:
    deployment = stack.api("GET", "/deployments/name/snapshot-product-media/nightly")
    assert deployment["parameters"] == {"target": "medusa", "keep": 14}
    deadline = time.monotonic() + 60
    runs: list[dict[str, object]] = []
    while time.monotonic() < deadline and not runs:
        runs = stack.api("POST", "/flow_runs/filter", json={
            "deployments": {"id": {"any_": [deployment["id"]]}},
            "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}}})
        time.sleep(1)
    assert runs, "the scheduler created no run for the nightly deployment"


def test_serve_runs_a_deployment_triggered_through_the_api(stack: Stack) -> None:
    from tests.server.conftest import stop

    # serve.py and prefect.yaml register the same names: a server uses one or the other.
    stop(stack.processes["worker"])
    for deployment in stack.api("POST", "/deployments/filter", json={}):
        stack.api("DELETE", f"/deployments/{deployment['id']}")
    served = stack.start("serve", [sys.executable, "deployments/serve.py"])
    try:
        deadline = time.monotonic() + 120
        log = stack.logs / "serve.log"
        while "prefect deployment run" not in log.read_text(errors="replace"):
            assert served.poll() is None, "serve.py exited"
            assert time.monotonic() < deadline, "serve.py did not register its deployments"
            time.sleep(0.5)
        names = {d["name"] for d in stack.api("POST", "/deployments/filter", json={})}
        assert names == {"manual", "nightly"}
        assert len(stack.api("POST", "/deployments/filter", json={})) == 8
        deployment = stack.api("GET", "/deployments/name/check-site-reset/manual")
        run = stack.api("POST", f"/deployments/{deployment['id']}/create_flow_run",
                        json={"parameters": {"site_id": stack.sites["gazette"]}})
        assert stack.wait_state(run["id"], {"COMPLETED", "FAILED", "CRASHED"}) == "COMPLETED"
        assert table_checksums(stack.cms_url, CMS_TABLES)  # database still readable
    finally:
        stop(served)
