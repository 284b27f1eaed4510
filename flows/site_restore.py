"""Undo a site-structure reset from its snapshot.

verify the snapshot (checksum, totals, rows hash to the recorded plan) →
plan (rows to put back, already present, conflicting) → refuse conflicts
unless told to skip them → (dry run stops here) → approval (type the site's
slug) → insert with the original ids, re-link posts, restore the blueprint
state, in one transaction. Idempotent: a second run restores nothing.

Run:  uv run safeops site restore ./exports/cms-site-structure-snapshot-<slug>-<stamp>.json --live
"""

from __future__ import annotations

from prefect import flow

from safeops.core import events
from safeops.core.models import RunResult
from safeops.core.settings import validate_target
from tasks.common.approval import check_saved_plan, request_approval
from tasks.common.artifacts import counts_table, summary_markdown
from tasks.common.snapshots import now_utc
from tasks.site.restore import apply_site_restore, plan_site_restore

FLOW = "restore-site-structure"
WORK = ("content_types", "authors", "categories", "pages", "seo_entries", "term_links",
        "post_refs", "site_state")


@flow(name=FLOW)
def restore_site_structure(snapshot_uri: str, dry_run: bool = True, skip_conflicts: bool = False,
                           approved_plan_hash: str | None = None, approval_timeout_s: int = 3600,
                           target: str = "cms", approved_by: str | None = None) -> RunResult:
    """Put back exactly what a reset removed and changed.

    Args:
        snapshot_uri: The site snapshot written by reset-site-structure.
        dry_run: True (default) only reports what would be restored.
        skip_conflicts: Restore around rows created since the reset instead of refusing.
        approved_plan_hash: Plan hash of a reviewed dry run; replaces the approval pause.
        approval_timeout_s: How long the approval pause waits (nothing changes on timeout).
        target: Which database (a name such as 'cms', never a URL).
        approved_by: Who reviewed that saved plan (recorded in the audit row).
    """
    validate_target(target)
    started = now_utc()
    _, slug, plan = plan_site_restore(target, snapshot_uri, skip_conflicts)
    events.emit("plan", plan=plan)
    check_saved_plan(plan, approved_plan_hash)
    result = RunResult(flow=FLOW, target=plan.target, dry_run=dry_run,
                       snapshot_uri=snapshot_uri, plan=plan)
    todo = {k: plan.counts[k] for k in WORK}
    if not any(todo.values()):
        result.message = f"Nothing to restore: site {slug} already holds the snapshot's rows."
    if dry_run or not any(todo.values()):
        counts_table(plan, None, key="site-restore-counts")
        summary_markdown(result, key="site-restore-summary")
        return result
    result.approval = request_approval(
        plan, expected_confirmation=slug,
        what=[f"{todo[k]} {k.replace('_', ' ')}" for k in WORK if todo[k]] + plan.notes,
        snapshot_uri=snapshot_uri, timeout_s=approval_timeout_s,
        approved_plan_hash=approved_plan_hash, approved_by=approved_by)
    result.applied = apply_site_restore(target, snapshot_uri, skip_conflicts, plan.plan_hash,
                                        result.approval, started)
    _, _, after = plan_site_restore(target, snapshot_uri, True)
    result.after_totals = {f"left_{k}": after.counts[k] for k in WORK if after.counts[k]}
    counts_table(plan, result.applied, key="site-restore-counts")
    summary_markdown(result, key="site-restore-summary")
    return result
