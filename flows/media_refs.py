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

from safeops import events
from safeops.errors import ForeignSnapshot, SafeopsError, SnapshotInvalid
from safeops.models import RunResult
from safeops.settings import validate_target
from tasks.approval import check_saved_plan, request_approval
from tasks.artifacts import rows_table, snapshot_link, summary_markdown, verify_table
from tasks.concurrency import one_at_a_time
from tasks.media_refs import (
    FLOW,
    copy_media_objects,
    media_store,
    outcome_rows,
    plan_media_refs,
    write_media_refs,
)
from tasks.medusa_media import verify_media_snapshot
from tasks.snapshots import now_utc


@flow(name=FLOW)
def migrate_product_media_refs(target: str = "medusa", snapshot_uri: str | None = None,
                               dry_run: bool = True, approved_plan_hash: str | None = None,
                               approved_by: str | None = None,
                               approval_timeout_s: int = 3600) -> RunResult:
    """Copy product images to products/<id>/<stamp>-<uuid4><ext> and write ImageRefs.

    Args:
        target: Which database: 'medusa' reads MEDUSA_DATABASE_URL or the Prefect Secret
            block 'medusa-database-url'. A name, never a URL.
        snapshot_uri: A media snapshot (path or s3:// URI) to take the images from, e.g. the
            one a purge wrote; it is verified first. Empty: the live image rows.
        dry_run: True (default) only reports what would be copied, reused, skipped and
            already done, with the plan hash; nothing is written anywhere.
        approved_plan_hash: The plan hash of a reviewed dry run; it replaces the approval
            pause when it equals this run's plan, and a different hash is refused.
        approved_by: Who reviewed that saved plan (recorded in the audit rows).
        approval_timeout_s: How long the approval pause waits before giving up (nothing
            changes on timeout).
    """
    validate_target(target)
    store = media_store()
    log = get_run_logger()
    started = now_utc()

    if snapshot_uri:
        report = verify_media_snapshot(target, snapshot_uri, require_live_match=False)
        verify_table(report, key="media-refs-snapshot-verify")
        if not report.ok:
            failed = [c.name for c in report.checks if not c.ok]
            error = ForeignSnapshot if failed == ["source"] else SnapshotInvalid
            raise error(f"Refused: snapshot {snapshot_uri} failed the {', '.join(failed)} "
                        f"check(s): {report.failures()}; nothing changed.")
        snapshot_link(snapshot_uri, key="media-refs-snapshot")

    with one_at_a_time(target, enabled=not dry_run):
        plan = plan_media_refs(target, snapshot_uri)
        events.emit("plan", plan=plan)
        check_saved_plan(plan, approved_plan_hash)
        result = RunResult(flow=FLOW, target=plan.target, dry_run=dry_run,
                           snapshot_uri=snapshot_uri, plan=plan)
        todo = plan.counts["to_copy"] + plan.counts["to_reuse"]
        if not todo:
            result.message = (f"Nothing to migrate: {plan.counts['already_done']} image(s) "
                              f"already have refs, {plan.counts['images']} source image(s).")
        if dry_run or not todo:
            rows_table(outcome_rows(plan, None), key="media-refs-counts",
                       description=f"{FLOW} on {plan.target}: planned (dry run)")
            summary_markdown(result, key="media-refs-summary")
            return result

        result.approval = request_approval(
            plan, expected_confirmation=f"MIGRATE {todo} IMAGES",
            what=[f"copy {plan.counts['to_copy']} object(s) server-side in bucket "
                  f"{store.bucket} to products/<id>/<stamp>-<uuid4><ext>",
                  f"reuse {plan.counts['to_reuse']} copy(ies) an interrupted run left",
                  f"write metadata.media.refs of {plan.counts['products']} product(s) "
                  "(other metadata keys untouched, updated_at = now())",
                  *plan.notes,
                  "never change or delete a source object"],
            snapshot_uri=snapshot_uri, timeout_s=approval_timeout_s,
            approved_plan_hash=approved_plan_hash, approved_by=approved_by)

        copies = copy_media_objects(target, snapshot_uri, plan.plan_hash)
        written = write_media_refs(target, copies.refs, plan.plan_hash, result.approval,
                                   started, snapshot_uri)
    result.applied = {"copied": copies.copied, "reused": copies.reused, **written,
                      **{f"failed_{k}": v for k, v in copies.failed.items()}}
    log.info("refs written: %s", result.applied)
    rows_table(outcome_rows(plan, result.applied), key="media-refs-counts",
               description=f"{FLOW} on {plan.target}: planned and done")
    result.message = (f"{copies.copied} copied, {copies.reused} reused, "
                      f"{written['refs_written']} ref(s) written to "
                      f"{written['products_updated']} product(s).")
    summary_markdown(result, key="media-refs-summary")
    if copies.failed:
        raise SafeopsError(f"{sum(copies.failed.values())} copy(ies) failed "
                           f"({', '.join(copies.first_failed)}); refs were written for the "
                           "others, source objects are untouched; run again to retry them.")
    return result


if __name__ == "__main__":
    print(migrate_product_media_refs(dry_run=True).plan)
