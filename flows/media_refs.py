"""Move product media to ImageRefs: timestamp+UUID keys and `metadata.media.refs[]`.

(verify the snapshot, when given) → plan: map each source image URL to its
bucket key, HEAD it, find refs already written and copies an interrupted run
left behind → (dry run stops here) → approval → copy server-side, concurrently,
each copy checked (size, etag) → write `product.metadata.media` in short
batched transactions, other metadata keys untouched → counts table.

Source objects are only read, never changed or deleted. A re-run copies
nothing that is already referenced, and reuses copies a crashed run left.
The source is a verified media snapshot (so it works after a purge) or, without
one, the live `image` rows.

Run:  uv run safeops media migrate-refs                         # dry run
      uv run safeops media migrate-refs --snapshot URI --live    # after a purge
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from safeops.core.models import Plan, RunResult
from tasks.common.artifacts import rows_table, snapshot_link, verify_table
from tasks.common.destructive import destructive_run
from tasks.media.refs.copy import copy_media_objects
from tasks.media.refs.plan import FLOW, plan_media_refs
from tasks.media.refs.report import outcome_rows
from tasks.media.refs.store import media_store
from tasks.media.refs.write import write_media_refs
from tasks.media.verify import refuse_unless_verified, verify_media_snapshot


@flow(name=FLOW)
def migrate_product_media_refs(
    target: str = "medusa",
    dry_run: bool = True,
    approved_plan_hash: str | None = None,
    approved_by: str | None = None,
    approval_timeout_s: int = 3600,
    snapshot_uri: str | None = None,
    approved_plan_signature: str | None = None,
) -> RunResult:
    """Copy product images to products/<id>/<stamp>-<uuid4><ext> and write ImageRefs.

    Args:
        target: Which database: 'medusa' reads MEDUSA_DATABASE_URL or the Prefect Secret
            block 'medusa-database-url'. A name, never a URL.
        dry_run: True (default) only reports what would be copied, reused, skipped and
            already done, with the plan hash; nothing is written anywhere.
        approved_plan_hash: The plan hash of a reviewed dry run; it replaces the approval
            pause when it equals this run's plan, and a different hash is refused.
        approved_by: Who reviewed that saved plan (recorded in the audit rows).
        approval_timeout_s: How long the approval pause waits before giving up (nothing
            changes on timeout).
        snapshot_uri: A media snapshot (path or s3:// URI) to take the images from, e.g. the
            one a purge wrote; it is verified first. Empty: the live image rows.
        approved_plan_signature: The signed saved plan (``safeops sign-plan``): needed with
            approved_plan_hash when SAFEOPS_ALLOWED_SIGNERS is set.
    """
    store = media_store()

    def report_counts(plan: Plan, applied: dict[str, int] | None) -> None:
        rows_table(
            outcome_rows(plan, applied),
            key="media-refs-counts",
            description=f"{FLOW} on {plan.target}: "
            + ("planned (dry run)" if applied is None else "planned and done"),
        )

    with destructive_run(
        FLOW,
        target,
        dry_run=dry_run,
        approved_plan_hash=approved_plan_hash,
        approved_by=approved_by,
        approval_timeout_s=approval_timeout_s,
        approved_plan_signature=approved_plan_signature,
        artifacts="media-refs",
        report_counts=report_counts,
    ) as run:
        if snapshot_uri:
            report = verify_media_snapshot(target, snapshot_uri, require_live_match=False)
            verify_table(report, key="media-refs-snapshot-verify")
            refuse_unless_verified(
                report, f"Refused: snapshot {snapshot_uri}", "; nothing changed."
            )
            snapshot_link(snapshot_uri, key="media-refs-snapshot")
        plan = plan_media_refs(target, snapshot_uri)
        c = plan.counts
        todo = c["to_copy"] + c["to_reuse"]
        if run.planned(
            plan,
            snapshot_uri,
            nothing_to_do=not todo,
            nothing_message=f"Nothing to migrate: {c['already_done']} image(s) "
            f"already have refs, {c['images']} source image(s).",
        ):
            return run.require_result()

        run.approve(
            confirmation=f"MIGRATE {todo} IMAGES",
            what=[
                f"copy {c['to_copy']} object(s) server-side in bucket "
                f"{store.bucket} to products/<id>/<stamp>-<uuid4><ext>",
                f"reuse {c['to_reuse']} copy(ies) an interrupted run left",
                f"write metadata.media.refs of {c['products']} product(s) "
                "(other metadata keys untouched, updated_at = now())",
                *plan.notes,
                "never change or delete a source object",
            ],
        )
        copies = copy_media_objects(target, snapshot_uri, plan.plan_hash)
        written = write_media_refs(
            target, copies.refs, plan.plan_hash, run.approval, run.started, snapshot_uri
        )
        run.applied(
            {
                "copied": copies.copied,
                "reused": copies.reused,
                **written,
                **{f"failed_{k}": v for k, v in copies.failed.items()},
            }
        )
        get_run_logger().info("refs written: %s", run.require_result().applied)
        run.require_result().message = (
            f"{copies.copied} copied, {copies.reused} reused, "
            f"{written['refs_written']} ref(s) written to "
            f"{written['products_updated']} product(s)."
        )
        # The check afterwards: planned again, nothing may be left to copy or reuse
        # but what failed (a retry's work, said as such).
        after = plan_media_refs(target, snapshot_uri).counts
        left = after["to_copy"] + after["to_reuse"]
        failed = sum(copies.failed.values())
        return run.finish(
            problem=(
                f"{failed} copy(ies) failed ({', '.join(copies.first_failed)}); refs were "
                "written for the others, source objects are untouched; run again to retry them."
            )
            if copies.failed
            else (
                f"Refs written, but the check afterwards still finds {left} image(s) to "
                "migrate (added since the plan?); run again."
            )
            if left
            else None
        )


if __name__ == "__main__":
    print(migrate_product_media_refs(dry_run=True).plan)
