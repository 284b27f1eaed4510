"""Restore a Medusa catalog's image references from a media snapshot.

plan (load the snapshot, prove it intact and ours, sort its rows into to
insert / already present / product gone; a read-only view) → (dry run stops
here) → approval → apply in one transaction (load it again, lock, re-derive the
plan and refuse any drift, insert, count what is left, audit). With a saved
plan there is no pause and no plan step: the apply derives the plan once, under
its lock, and refuses unless it is the saved one. Running it twice changes
nothing the second time.

Run:  uv run safeops media restore ./exports/medusa-media-snapshot-<stamp>.json --live
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from safeops.core.models import Plan, RunResult
from tasks.common.destructive import counts_of, destructive_run
from tasks.media.restore import apply_media_restore, plan_media_restore

FLOW = "restore-product-media"
TODO = ("images", "variant_links", "product_thumbnails", "variant_thumbnails")
SINCE = (
    "images_product_soft_deleted",
    "products_soft_deleted",
    "images_after_newer_images",
    "products_with_newer_images",
)
NOTHING = "Nothing to restore: every row of the snapshot is already present."


@flow(name=FLOW)
def restore_product_media(
    snapshot_uri: str,
    target: str = "medusa",
    dry_run: bool = True,
    approved_plan_hash: str | None = None,
    approved_by: str | None = None,
    approval_timeout_s: int = 3600,
    force: bool = False,
    allow_untraced: bool = False,
    approved_plan_signature: str | None = None,
) -> RunResult:
    """Put back image rows, variant links and empty thumbnails from a snapshot.

    Args:
        snapshot_uri: The media snapshot to restore from (path or s3:// URI).
        target: Which database (a name such as 'medusa', never a URL).
        dry_run: True (default) only reports what would be restored.
        approved_plan_hash: Plan hash of a reviewed dry run; replaces the approval pause.
        approved_by: Who reviewed that saved plan (recorded in the audit row).
        approval_timeout_s: How long the approval pause waits (nothing changes on timeout).
        force: Restore a snapshot taken from another database (fingerprint differs).
        allow_untraced: Restore a snapshot that is not in this database's snapshot register
            (not written by safeops from it); the approval and the audit row say so.
        approved_plan_signature: The signed saved plan (``safeops sign-plan``): needed with
            approved_plan_hash when SAFEOPS_ALLOWED_SIGNERS is set.
    """
    with destructive_run(
        FLOW,
        target,
        dry_run=dry_run,
        approved_plan_hash=approved_plan_hash,
        approved_by=approved_by,
        approval_timeout_s=approval_timeout_s,
        approved_plan_signature=approved_plan_signature,
        artifacts="media-restore",
    ) as run:
        if run.saved_plan_approves():
            # Nobody reads a plan between plan and apply: the apply plans, under its lock.
            approval = run.approve_saved_plan(FLOW)
            done = apply_media_restore(
                target,
                snapshot_uri,
                force,
                run.approved_plan_hash or "",
                approval,
                run.started,
                allow_untraced,
                saved_plan=True,
            )
            if run.planned(
                done.plan,
                snapshot_uri,
                nothing_to_do=not done.applied,
                nothing_message=NOTHING,
                announced=True,
            ):
                return run.require_result()
            run.require_result().approval = approval
        else:
            plan = plan_media_restore(target, snapshot_uri, force, allow_untraced)
            if run.planned(
                plan,
                snapshot_uri,
                nothing_to_do=not any(counts_of(plan, TODO).values()),
                nothing_message=NOTHING,
            ):
                return run.require_result()
            run.approve(confirmation=f"RESTORE {plan.counts['images']} IMAGES", what=what(plan))
            done = apply_media_restore(
                target,
                snapshot_uri,
                force,
                plan.plan_hash,
                run.approval,
                run.started,
                allow_untraced,
            )

        run.applied(done.applied)
        get_run_logger().info("restore committed: %s (snapshot had %s)", done.applied, done.totals)
        # The check afterwards, counted in the apply's transaction before its commit.
        run.require_result().after_totals = {f"left_{k}": v for k, v in done.left.items()}
        return run.finish(
            problem=(f"Restore committed but rows are still missing afterwards: {done.left}.")
            if any(done.left.values())
            else None
        )


def what(plan: Plan) -> list[str]:
    """What the approver is asked to approve, line by line."""
    todo, since = counts_of(plan, TODO), counts_of(plan, SINCE)
    return [
        f"insert {todo['images']} image row(s) with their original ids",
        f"of which {since['images_product_soft_deleted']} come back "
        f"soft-deleted with their product: "
        f"{since['products_soft_deleted']} product(s) soft-deleted since the "
        "snapshot, on which no product or variant thumbnail is set",
        f"of which {since['images_after_newer_images']} follow, in snapshot "
        f"order, the images {since['products_with_newer_images']} product(s) "
        "gained since (those keep their ranks)",
        f"insert {todo['variant_links']} variant-image link(s)",
        f"set {todo['product_thumbnails']} product and "
        f"{todo['variant_thumbnails']} variant thumbnail(s) that are empty now",
        *(f"skip {note}" for note in plan.notes),
        *plan.details,
    ]


if __name__ == "__main__":
    import sys

    print(restore_product_media(sys.argv[1], dry_run=True).plan)
