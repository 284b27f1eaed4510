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

from safeops.core.models import RunResult
from safeops.core.settings import validate_target
from tasks.common.destructive import counts_of, destructive_run
from tasks.common.snapshots import summary_of
from tasks.site.check import parse_site_id
from tasks.site.restore import apply_site_restore, plan_site_restore
from tasks.site.snapshot import SITE_FORMAT

FLOW = "restore-site-structure"
WORK = (
    "content_types",
    "authors",
    "categories",
    "pages",
    "seo_entries",
    "term_links",
    "post_refs",
    "site_state",
)


@flow(name=FLOW)
def restore_site_structure(
    snapshot_uri: str,
    target: str = "cms",
    dry_run: bool = True,
    approved_plan_hash: str | None = None,
    approved_by: str | None = None,
    approval_timeout_s: int = 3600,
    skip_conflicts: bool = False,
    allow_untraced: bool = False,
    approved_plan_signature: str | None = None,
) -> RunResult:
    """Put back exactly what a reset removed and changed.

    Args:
        snapshot_uri: The site snapshot written by reset-site-structure.
        target: Which database (a name such as 'cms', never a URL).
        dry_run: True (default) only reports what would be restored.
        approved_plan_hash: Plan hash of a reviewed dry run; replaces the approval pause.
        approved_by: Who reviewed that saved plan (recorded in the audit row).
        approval_timeout_s: How long the approval pause waits (nothing changes on timeout).
        skip_conflicts: Restore around rows created since the reset instead of refusing.
        allow_untraced: Restore a snapshot that is not in this database's snapshot register
            (not written by safeops from it); the approval and the audit row say so.
        approved_plan_signature: The signed saved plan (``safeops sign-plan``): needed with
            approved_plan_hash when SAFEOPS_ALLOWED_SIGNERS is set.
    """
    validate_target(target)
    # The site's slot, like its reset's: a restore and a reset of one site never interleave.
    site = parse_site_id(summary_of(snapshot_uri, SITE_FORMAT).get("siteId"))
    with destructive_run(
        FLOW,
        target,
        dry_run=dry_run,
        approved_plan_hash=approved_plan_hash,
        approved_by=approved_by,
        approval_timeout_s=approval_timeout_s,
        approved_plan_signature=approved_plan_signature,
        artifacts="site-restore",
        scope=(site,),
    ) as run:
        _, slug, plan = plan_site_restore(target, snapshot_uri, skip_conflicts, allow_untraced)
        todo = counts_of(plan, WORK)
        if run.planned(
            plan,
            snapshot_uri,
            nothing_to_do=not any(todo.values()),
            nothing_message=f"Nothing to restore: site {slug} already holds the snapshot's rows.",
        ):
            return run.require_result()

        run.approve(
            confirmation=slug,
            what=[f"{todo[k]} {k.replace('_', ' ')}" for k in WORK if todo[k]]
            + plan.notes
            + plan.details,
        )
        run.applied(
            apply_site_restore(
                target,
                snapshot_uri,
                skip_conflicts,
                plan.plan_hash,
                run.approval,
                run.started,
                allow_untraced,
            )
        )

        _, _, after = plan_site_restore(target, snapshot_uri, True, allow_untraced)
        run.require_result().after_totals = {
            f"left_{k}": after.counts[k] for k in WORK if after.counts[k]
        }
        return run.finish()
