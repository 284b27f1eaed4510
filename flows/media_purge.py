"""Purge every image reference of a Medusa catalog, safely.

snapshot (and its plan, in the same consistent view) → verify the stored file
against that view → (dry run stops here) → approval → apply in one transaction
(under its lock: the live rows still hash to the plan, the file is unchanged)
→ a fresh snapshot proves zero images and thumbnails are left.
MinIO objects are never touched; `restore-product-media` undoes the purge
from the snapshot this run writes.

Run:  uv run safeops media purge              # dry run: counts and plan hash
      uv run safeops media purge --live       # asks for the typed confirmation
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from safeops.core.errors import DriftDetected
from safeops.core.models import RunResult
from tasks.common.artifacts import snapshot_link
from tasks.common.destructive import destructive_run
from tasks.media.purge import apply_media_purge
from tasks.media.snapshot import take_media_snapshot
from tasks.media.verify import verify_media_snapshot

FLOW = "purge-product-media"


@flow(name=FLOW)
def purge_product_media(
    target: str = "medusa",
    dry_run: bool = True,
    approved_plan_hash: str | None = None,
    approved_by: str | None = None,
    approval_timeout_s: int = 3600,
    snapshot_location: str | None = None,
    approved_plan_signature: str | None = None,
) -> RunResult:
    """Remove every image reference (images, variant links, thumbnails); files stay in MinIO.

    Args:
        target: Which database: 'medusa' reads MEDUSA_DATABASE_URL or the Prefect Secret
            block 'medusa-database-url'. A name, never a URL.
        dry_run: True (default) stops after the verified snapshot and plan; nothing changes.
        approved_plan_hash: The plan hash of a reviewed dry run; it replaces the approval
            pause when it equals this run's plan, and a different hash is refused.
        approved_by: Who reviewed that saved plan (recorded in the audit row).
        approved_plan_signature: The signed saved plan (``safeops sign-plan``): needed with
            approved_plan_hash when SAFEOPS_ALLOWED_SIGNERS is set.
        approval_timeout_s: How long the approval pause waits before giving up (nothing
            changes on timeout).
        snapshot_location: Folder or s3://bucket/prefix; SAFEOPS_SNAPSHOT_URI when empty.
    """
    with destructive_run(
        FLOW,
        target,
        dry_run=dry_run,
        approved_plan_hash=approved_plan_hash,
        approved_by=approved_by,
        approval_timeout_s=approval_timeout_s,
        approved_plan_signature=approved_plan_signature,
        artifacts="media-purge",
    ) as run:
        # One rendering of the catalog: the plan comes from the snapshot's own view,
        # and the verify proves the stored file holds exactly what that view rendered.
        snapshot = take_media_snapshot(target, snapshot_location, plan=True)
        snapshot_link(snapshot.uri, key="media-purge-snapshot", announce="snapshot")
        report = verify_media_snapshot(target, snapshot.uri, written=snapshot)
        if not report.ok:
            raise DriftDetected(
                "Refused: the fresh snapshot does not verify "
                f"({report.failures()}); nothing changed."
            )
        plan = snapshot.plan
        if plan is None or plan.plan_hash != report.plan_hash:
            raise DriftDetected(
                "Refused: the snapshot's plan and the verified file disagree; "
                "nothing changed. Run it again."
            )
        if run.planned(
            plan,
            snapshot.uri,
            nothing_to_do=plan.is_empty,
            nothing_message="Nothing to purge: the catalog holds no image reference.",
        ):
            return run.require_result()

        c = plan.counts
        run.approve(
            confirmation=f"PURGE {c['images']} IMAGES",
            what=[
                f"delete {c['images']} image row(s) (soft-deleted included)",
                f"delete {c['variant_links']} variant-image link(s)",
                f"clear {c['product_thumbnails']} product thumbnail(s)",
                f"clear {c['variant_thumbnails']} variant thumbnail(s)",
                "leave every MinIO object and cart/order/inventory copy untouched",
            ],
        )
        run.applied(
            apply_media_purge(
                target,
                snapshot.uri,
                plan.plan_hash,
                run.approval,
                run.started,
                verified_sha256=report.file_sha256,
                verified_plan_hash=report.plan_hash,
            )
        )
        get_run_logger().info("purge committed: %s", run.require_result().applied)

        after = take_media_snapshot(target, snapshot_location)
        snapshot_link(after.uri, key="media-purge-after-snapshot", announce="after")
        result = run.require_result()
        result.after_snapshot_uri, result.after_totals = after.uri, after.totals
        images, thumbnails = after.totals["totalImages"], after.totals["totalThumbnails"]
        return run.finish(
            problem=(
                f"Purge committed but the check afterwards still finds "
                f"{images} image(s) and {thumbnails} thumbnail(s) (written "
                "since?)."
            )
            if images or thumbnails
            else None
        )


if __name__ == "__main__":
    print(purge_product_media(dry_run=True).plan)
