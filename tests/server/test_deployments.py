"""Today's flows, unchanged, run by a real Prefect server and worker."""

from __future__ import annotations

import json
import re
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.conftest import CMS_TABLES, MEDUSA_TABLES
from tests.pg import scalar, table_checksums
from tests.server.conftest import ARTIFACTS, CHROMIUM, PREFECT, WORKERS, Stack, resume_form

# One PostgreSQL-backed server stack per session: every server test on one xdist worker.
pytestmark = [pytest.mark.server, pytest.mark.xdist_group("prefect-server")]


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
    return list(
        stack.api(
            "POST", "/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run_id]}}}
        )
    )


def test_reset_approved_with_safeops_approve(stack: Stack) -> None:
    site = stack.sites["atelier"]
    run_id = run_deployment(
        stack, "reset-site-structure/manual", f"site_id={site}", "dry_run=false"
    )
    stack.wait_state(run_id, {"PAUSED"}, timeout=180)
    listed = stack.safeops("approvals")
    assert listed.returncode == 0, listed.stderr
    assert f"waiting: {run_id} reset-site-structure" in listed.stdout

    approved = stack.safeops(
        "approve", run_id, "--approver", "alice", "--confirm", "atelier", "--reason", "server test"
    )
    assert approved.returncode == 0, approved.stderr
    assert stack.wait_state(run_id, {"COMPLETED", "FAILED", "CRASHED"}) == "COMPLETED"
    assert (
        scalar(
            stack.cms_url,
            "SELECT count(*) FROM terms WHERE site_id = %s AND type = 'category'",
            site,
        )
        == 0
    )
    assert (
        scalar(
            stack.cms_url,
            "SELECT approver FROM safeops.safeops_audit WHERE flow_run_id = %s",
            run_id,
        )
        == "alice"
    )
    deleted = next(a for a in artifacts_of(stack, run_id) if a["key"] == "site-reset-deleted")
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


@pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason=f"{CHROMIUM} missing: `apt-get install chromium` (.ci/run does)",
)
def test_approval_in_the_prefect_ui_with_headless_chromium(stack: Stack) -> None:
    site = stack.sites["empty-site"]
    run_id = run_deployment(
        stack, "reset-site-structure/manual", f"site_id={site}", "dry_run=false"
    )
    stack.wait_state(run_id, {"PAUSED"}, timeout=180)
    with resume_form(stack, run_id, height=1000) as (page, form):
        form.get_by_text("empty-site").first.wait_for()
        for label, value in (
            ("Approver", "carol"),
            ("Reason", "UI test"),
            ("Confirmation", "empty-site"),
        ):
            form.locator(".schema-form-property", has_text=label).locator("textarea").fill(value)
        form.screenshot(path=str(ARTIFACTS / "approval-form.png"))
        form.get_by_role("button", name="Submit").click()
        assert stack.wait_state(run_id, {"COMPLETED", "FAILED", "CRASHED"}) == "COMPLETED"
        page.reload()
        page.get_by_text("Completed").first.wait_for(timeout=30_000)
    assert scalar(stack.cms_url, "SELECT count(*) FROM authors WHERE site_id = %s", site) == 0
    assert (
        scalar(
            stack.cms_url,
            "SELECT approver FROM safeops.safeops_audit WHERE flow_run_id = %s",
            run_id,
        )
        == "carol"
    )


def test_nightly_schedule_creates_scheduled_runs(stack: Stack) -> None:
    deployment = stack.api("GET", "/deployments/name/snapshot-product-media/nightly")
    assert deployment["parameters"] == {"target": "medusa", "keep": 14}
    deadline = time.monotonic() + 60
    runs: list[dict[str, object]] = []
    while time.monotonic() < deadline and not runs:
        runs = stack.api(
            "POST",
            "/flow_runs/filter",
            json={
                "deployments": {"id": {"any_": [deployment["id"]]}},
                "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}},
            },
        )
        time.sleep(1)
    assert runs, "the scheduler created no run for the nightly deployment"


# ------------------------------------------------- scale-out: two workers, one server on PostgreSQL


def start_runs(stack: Stack, deployment: str, *parameters: dict[str, object]) -> list[str]:
    """Create the flow runs back to back through the API, as the UI's "Run" button does."""
    dep = stack.api("GET", f"/deployments/name/{deployment}")
    return [
        str(
            stack.api("POST", f"/deployments/{dep['id']}/create_flow_run", json={"parameters": p})[
                "id"
            ]
        )
        for p in parameters
    ]


def approve_purge(stack: Stack, run_id: str, approver: str) -> None:
    """Answer the pause through the REST API (as the UI's form does), typing the confirmation
    the run itself asked for."""
    request = stack.api("GET", f"/flow_runs/{run_id}/input/safeops-approval")
    request = json.loads(request) if isinstance(request, str) else request
    answer = stack.api(
        "POST",
        f"/flow_runs/{run_id}/resume",
        json={
            "run_input": {
                "approver": approver,
                "reason": "scale-out test",
                "confirmation": request["expectedConfirmation"],
                "decision": "approve",
            }
        },
    )
    assert answer["status"] == "ACCEPT", answer


def states_of(stack: Stack, run_id: str) -> list[tuple[str, datetime]]:
    states = stack.api("GET", "/flow_run_states/", params={"flow_run_id": run_id})
    return sorted(((s["type"], at(s["timestamp"])) for s in states), key=lambda s: s[1])


def task_starts(stack: Stack, run_id: str) -> list[datetime]:
    runs = stack.api("POST", "/task_runs/filter", json={"flow_runs": {"id": {"any_": [run_id]}}})
    return sorted(at(r["start_time"]) for r in runs if r["start_time"])


def worker_of(stack: Stack, run_id: str, timeout: float = 60) -> str:
    """The worker that submitted the run, from its `prefect.worker.submitted-flow-run` event
    (events reach the database a few seconds after they happen)."""
    deadline = time.monotonic() + timeout
    while True:
        page = stack.api(
            "POST",
            "/events/filter",
            json={
                "limit": 10,
                "filter": {
                    "event": {"name": ["prefect.worker.submitted-flow-run"]},
                    "related": {"resources_in_roles": [[f"prefect.flow-run.{run_id}", "flow-run"]]},
                },
            },
        )
        names = {e["resource"]["prefect.resource.name"] for e in page["events"]}
        if names:
            assert len(names) == 1, names
            return names.pop()
        assert time.monotonic() < deadline, f"no worker event for {run_id}"
        time.sleep(1)


def at(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def end_of(stack: Stack, run_id: str) -> datetime:
    return at(stack.flow_run(run_id)["end_time"])


def test_two_live_runs_on_one_database_queue_across_the_two_workers(stack: Stack) -> None:
    """Both runs are live on `medusa-b`. The first to take the target's slot pauses for its
    approval; the other, started at the same time on the other worker, must wait: it does
    not reach its first step until the first run has finished, then finds nothing left."""
    url = stack.targets["medusa-b"]
    images = scalar(url, "SELECT count(*) FROM image")
    assert images
    runs = start_runs(
        stack, "purge-product-media/manual", *[{"target": "medusa-b", "dry_run": False}] * 2
    )
    deadline = time.monotonic() + 240
    paused: list[str] = []
    while not paused:
        assert time.monotonic() < deadline, f"neither run paused; logs in {stack.logs}"
        paused = [r for r in runs if stack.flow_run(r)["state"]["type"] == "PAUSED"]
        time.sleep(0.5)
    first, second = paused[0], next(r for r in runs if r != paused[0])
    # Both are running (each on its own worker: a worker takes one run at a time) ...
    assert stack.wait_state(second, {"RUNNING", "PAUSED"}, timeout=240) == "RUNNING"
    # ... and while the first waits for its approver, the second holds back.
    time.sleep(5)
    assert stack.flow_run(first)["state"]["type"] == "PAUSED"
    assert stack.flow_run(second)["state"]["type"] == "RUNNING"

    approve_purge(stack, first, "alice")
    assert stack.wait_state(first, {"COMPLETED", "FAILED", "CRASHED"}) == "COMPLETED"
    assert stack.wait_state(second, {"COMPLETED", "FAILED", "CRASHED", "PAUSED"}) == "COMPLETED"

    first_end = end_of(stack, first)
    second_starts = task_starts(stack, second)
    assert second_starts and second_starts[0] >= first_end, (second_starts, first_end)
    assert "PAUSED" not in [t for t, _ in states_of(stack, second)]  # nothing left to approve
    assert scalar(url, "SELECT count(*) FROM image") == 0
    assert scalar(url, "SELECT count(*) FROM safeops.safeops_audit") == 1
    assert str(scalar(url, "SELECT flow_run_id FROM safeops.safeops_audit")) == first
    assert {worker_of(stack, first), worker_of(stack, second)} == set(WORKERS)


def test_live_runs_on_two_databases_proceed_side_by_side(stack: Stack) -> None:
    """One live run on `medusa-c`, one on `medusa-d`: both reach their approval pause (which
    each holds inside its target's slot) at the same time, on the two workers."""
    runs = start_runs(
        stack,
        "purge-product-media/manual",
        {"target": "medusa-c", "dry_run": False},
        {"target": "medusa-d", "dry_run": False},
    )
    for run_id in runs:
        stack.wait_state(run_id, {"PAUSED"}, timeout=240)
    assert [stack.flow_run(r)["state"]["type"] for r in runs] == ["PAUSED", "PAUSED"]

    for run_id in runs:
        approve_purge(stack, run_id, "bob")
    for run_id in runs:
        assert stack.wait_state(run_id, {"COMPLETED", "FAILED", "CRASHED"}) == "COMPLETED"
    # Read back through the API: each run paused before the other one ended.
    c, d = runs
    paused_c = next(t for s, t in states_of(stack, c) if s == "PAUSED")
    paused_d = next(t for s, t in states_of(stack, d) if s == "PAUSED")
    assert paused_c < end_of(stack, d) and paused_d < end_of(stack, c)
    for target, run_id in zip(("medusa-c", "medusa-d"), runs, strict=True):
        url = stack.targets[target]
        assert scalar(url, "SELECT count(*) FROM image") == 0
        assert str(scalar(url, "SELECT flow_run_id FROM safeops.safeops_audit")) == run_id
    assert {worker_of(stack, c), worker_of(stack, d)} == set(WORKERS)


def test_serve_runs_a_deployment_triggered_through_the_api(stack: Stack) -> None:
    from tests.server.conftest import stop

    # serve.py and prefect.yaml register the same names: a server uses one or the other.
    # Last in the session: it stops the workers and deletes the deployments.
    stop(*(stack.processes[name] for name in WORKERS))
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
        run = stack.api(
            "POST",
            f"/deployments/{deployment['id']}/create_flow_run",
            json={"parameters": {"site_id": stack.sites["gazette"]}},
        )
        assert stack.wait_state(run["id"], {"COMPLETED", "FAILED", "CRASHED"}) == "COMPLETED"
        assert table_checksums(stack.cms_url, CMS_TABLES)  # database still readable
    finally:
        stop(served)
