"""Restore a Medusa catalog's image references from a media snapshot.

verify the snapshot → refuse one from another database (unless forced) →
plan (rows to insert, already present, whose product is gone) → (dry run
stops here) → approval → insert in one transaction → plan again: nothing
left to restore. Running it twice changes nothing the second time.

Run:  uv run safeops media restore ./exports/medusa-media-snapshot-<stamp>.json --live
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from safeops import events
from safeops.errors import SafeopsError
from safeops.models import RunResult
from safeops.settings import validate_target
from tasks.approval import check_saved_plan, request_approval
from tasks.artifacts import counts_table, summary_markdown
from tasks.concurrency import one_at_a_time
from tasks.medusa_media import apply_media_restore, plan_media_restore, verify_media_snapshot
from tasks.snapshots import now_utc

FLOW = "restore-product-media"


@flow(name=FLOW)
def restore_product_media(snapshot_uri: str, target: str = "medusa", dry_run: bool = True,
                          force: bool = False, approved_plan_hash: str | None = None,
                          approved_by: str | None = None,
                          approval_timeout_s: int = 3600) -> RunResult:
    """Put back image rows, variant links and empty thumbnails from a snapshot.

    Args:
        snapshot_uri: The media snapshot to restore from (path or s3:// URI).
        target: Which database (a name such as 'medusa', never a URL).
        dry_run: True (default) only reports what would be restored.
        force: Restore a snapshot taken from another database (fingerprint differs).
        approved_plan_hash: Plan hash of a reviewed dry run; replaces the approval pause.
        approved_by: Who reviewed that saved plan (recorded in the audit row).
        approval_timeout_s: How long the approval pause waits (nothing changes on timeout).
    """
    validate_target(target)
    started = now_utc()

    with one_at_a_time(target, enabled=not dry_run):
        report = verify_media_snapshot(target, snapshot_uri, require_live_match=False)
        plan = plan_media_restore(target, snapshot_uri, force)
        events.emit("plan", plan=plan)
        check_saved_plan(plan, approved_plan_hash)
        result = RunResult(flow=FLOW, target=plan.target, dry_run=dry_run,
                           snapshot_uri=snapshot_uri, plan=plan)
        todo = {k: plan.counts[k] for k in ("images", "variant_links", "product_thumbnails",
                                            "variant_thumbnails")}
        if not any(todo.values()):
            result.message = "Nothing to restore: every row of the snapshot is already present."
        if dry_run or not any(todo.values()):
            counts_table(plan, None, key="media-restore-counts")
            summary_markdown(result, key="media-restore-summary")
            return result

        result.approval = request_approval(
            plan, expected_confirmation=f"RESTORE {todo['images']} IMAGES",
            what=[f"insert {todo['images']} image row(s) with their original ids",
                  f"insert {todo['variant_links']} variant-image link(s)",
                  f"set {todo['product_thumbnails']} product and {todo['variant_thumbnails']} "
                  "variant thumbnail(s) that are empty now",
                  *(f"skip {note}" for note in plan.notes)],
            snapshot_uri=snapshot_uri, timeout_s=approval_timeout_s,
            approved_plan_hash=approved_plan_hash, approved_by=approved_by)
        result.applied = apply_media_restore(target, snapshot_uri, force, plan.plan_hash,
                                             result.approval, started)
        get_run_logger().info("restore committed: %s (snapshot had %s)", result.applied,
                              report.totals)
        after = plan_media_restore(target, snapshot_uri, force)
        left = {k: after.counts[k] for k in todo}
        result.after_totals = {f"left_{k}": v for k, v in left.items()}
        counts_table(plan, result.applied, key="media-restore-counts")
        summary_markdown(result, key="media-restore-summary")
        if any(left.values()):
            raise SafeopsError(f"Restore committed but rows are still missing afterwards: {left}.")
        return result
