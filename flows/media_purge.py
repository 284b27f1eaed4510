"""Purge every image reference of a Medusa catalog, safely.

snapshot → verify → plan → (dry run stops here) → approval → apply in one
transaction → a fresh snapshot proves zero images and thumbnails are left.
MinIO objects are never touched; `restore-product-media` undoes the purge
from the snapshot this run writes.

Run:  uv run safeops media purge              # dry run: counts and plan hash
      uv run safeops media purge --live       # asks for the typed confirmation
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from safeops import events
from safeops.errors import DriftDetected, SafeopsError
from safeops.models import RunResult
from safeops.settings import validate_target
from tasks.approval import check_saved_plan, request_approval
from tasks.artifacts import counts_table, snapshot_link, summary_markdown
from tasks.concurrency import one_at_a_time
from tasks.medusa_media import (
    apply_media_purge,
    plan_media_purge,
    take_media_snapshot,
    verify_media_snapshot,
)
from tasks.snapshots import now_utc

FLOW = "purge-product-media"


@flow(name=FLOW)
def purge_product_media(target: str = "medusa", dry_run: bool = True,
                        approved_plan_hash: str | None = None, approved_by: str | None = None,
                        approval_timeout_s: int = 3600,
                        snapshot_location: str | None = None) -> RunResult:
    """Remove every image reference (images, variant links, thumbnails); files stay in MinIO.

    Args:
        target: Which database: 'medusa' reads MEDUSA_DATABASE_URL or the Prefect Secret
            block 'medusa-database-url'. A name, never a URL.
        dry_run: True (default) stops after the verified snapshot and plan; nothing changes.
        approved_plan_hash: The plan hash of a reviewed dry run; it replaces the approval
            pause when it equals this run's plan, and a different hash is refused.
        approved_by: Who reviewed that saved plan (recorded in the audit row).
        approval_timeout_s: How long the approval pause waits before giving up (nothing
            changes on timeout).
        snapshot_location: Folder or s3://bucket/prefix; SAFEOPS_SNAPSHOT_URI when empty.
    """
    validate_target(target)
    log = get_run_logger()
    started = now_utc()

    with one_at_a_time(target, enabled=not dry_run):
        snapshot = take_media_snapshot(target, snapshot_location)
        snapshot_link(snapshot.uri, key="media-purge-snapshot")
        report = verify_media_snapshot(target, snapshot.uri)
        if not report.ok:
            raise DriftDetected("Refused: the fresh snapshot does not verify "
                                f"({report.failures()}); nothing changed.")

        plan = plan_media_purge(target)
        if plan.plan_hash != report.plan_hash:
            raise DriftDetected("Refused: the catalog changed while the snapshot was being "
                                "verified (plan hash moved); nothing changed. Run it again.")
        events.emit("plan", plan=plan)
        check_saved_plan(plan, approved_plan_hash)
        result = RunResult(flow=FLOW, target=plan.target, dry_run=dry_run,
                           snapshot_uri=snapshot.uri, plan=plan)
        if plan.is_empty:
            result.message = "Nothing to purge: the catalog holds no image reference."
        if dry_run or plan.is_empty:
            counts_table(plan, None, key="media-purge-counts")
            summary_markdown(result, key="media-purge-summary")
            return result

        images = plan.counts["images"]
        result.approval = request_approval(
            plan, expected_confirmation=f"PURGE {images} IMAGES",
            what=[f"delete {images} image row(s) (soft-deleted included)",
                  f"delete {plan.counts['variant_links']} variant-image link(s)",
                  f"clear {plan.counts['product_thumbnails']} product thumbnail(s)",
                  f"clear {plan.counts['variant_thumbnails']} variant thumbnail(s)",
                  "leave every MinIO object and cart/order/inventory copy untouched"],
            snapshot_uri=snapshot.uri, timeout_s=approval_timeout_s,
            approved_plan_hash=approved_plan_hash, approved_by=approved_by)

        result.applied = apply_media_purge(target, snapshot.uri, plan.plan_hash, result.approval,
                                           started, verified_sha256=report.file_sha256,
                                           verified_plan_hash=report.plan_hash)
        log.info("purge committed: %s", result.applied)

        after = take_media_snapshot(target, snapshot_location)
        result.after_snapshot_uri, result.after_totals = after.uri, after.totals
        counts_table(plan, result.applied, key="media-purge-counts")
        summary_markdown(result, key="media-purge-summary")
        if after.totals["totalImages"] or after.totals["totalThumbnails"]:
            raise SafeopsError(f"Purge committed but the check afterwards still finds "
                               f"{after.totals['totalImages']} image(s) and "
                               f"{after.totals['totalThumbnails']} thumbnail(s) (written since?).")
        return result


if __name__ == "__main__":
    print(purge_product_media(dry_run=True).plan)
