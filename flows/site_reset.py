"""Reset one CMS site's blueprint structure, only while it has no published post.

check → plan + snapshot (one consistent read) → verify the snapshot →
(dry run stops here) → approval (type the site's slug) → apply in one
transaction (the snapshot file must still be the verified one; lock the site,
re-check the guard, delete in dependency order while proving the deleted rows
hash to the approved plan, reset the blueprint state, prove nothing else was
written, audit) → verify: no structure and no orphan SEO rows left.
`restore-site-structure` undoes it.

Run:  uv run safeops site check <site-id>
      uv run safeops site reset <site-id> --live
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from safeops import events
from safeops.errors import ResetNotAllowed, SafeopsError
from safeops.models import RunResult
from safeops.settings import validate_target
from tasks.approval import check_saved_plan, request_approval
from tasks.artifacts import counts_table, snapshot_link, summary_markdown
from tasks.cms_site import (
    apply_site_reset,
    check_site,
    parse_site_id,
    snapshot_site,
    verify_site_reset,
    verify_site_snapshot,
)
from tasks.cms_sql import HEADLINE
from tasks.concurrency import one_at_a_time
from tasks.snapshots import now_utc

FLOW = "reset-site-structure"


@flow(name="check-site-reset")
def check_site_reset(site_id: str, target: str = "cms") -> dict[str, Any]:
    """Can this site's structure be reset? Only with zero published posts.

    Args:
        site_id: The site's UUID.
        target: Which database: 'cms' reads CMS_DATABASE_URL or the Prefect Secret block
            'cms-database-url'. A name, never a URL.
    """
    validate_target(target)
    verdict = check_site(target, parse_site_id(site_id))
    create_table_artifact([verdict], key="site-reset-check",
                          description=f"reset eligibility of site {site_id}")
    get_run_logger().info(verdict["reason"])
    return verdict


@flow(name=FLOW)
def reset_site_structure(site_id: str, dry_run: bool = True,
                         approved_plan_hash: str | None = None, approval_timeout_s: int = 3600,
                         target: str = "cms", approved_by: str | None = None,
                         snapshot_location: str | None = None) -> RunResult:
    """Delete a site's categories, authors, pages, content types and their SEO meta.

    Args:
        site_id: The site's UUID.
        dry_run: True (default) stops after the verified snapshot and plan; nothing changes.
        approved_plan_hash: Plan hash of a reviewed dry run; replaces the approval pause when
            it equals this run's plan, and a different hash is refused.
        approval_timeout_s: How long the approval pause waits (nothing changes on timeout).
        target: Which database: 'cms' reads CMS_DATABASE_URL or the Prefect Secret block
            'cms-database-url'. A name, never a URL.
        approved_by: Who reviewed that saved plan (recorded in the audit row).
        snapshot_location: Folder or s3://bucket/prefix; SAFEOPS_SNAPSHOT_URI when empty.
    """
    validate_target(target)
    site = parse_site_id(site_id)
    started = now_utc()

    with one_at_a_time(target, "site", site, enabled=not dry_run):
        verdict = check_site(target, site)
        if not verdict["canReset"]:
            raise ResetNotAllowed(verdict["reason"])
        slug = verdict["siteSlug"]

        snapshot, plan = snapshot_site(target, site, snapshot_location)
        snapshot_link(snapshot.uri, key="site-reset-snapshot")
        verified = verify_site_snapshot(target, snapshot.uri, plan.plan_hash)
        events.emit("plan", plan=plan)
        check_saved_plan(plan, approved_plan_hash)
        result = RunResult(flow=FLOW, target=plan.target, dry_run=dry_run,
                           snapshot_uri=snapshot.uri, plan=plan)
        if plan.is_empty:
            result.message = (f"Nothing to reset: site {slug} holds no blueprint structure and "
                              "its blueprint state is reset already.")
        if dry_run or plan.is_empty:
            counts_table(plan, None, key="site-reset-counts")
            summary_markdown(result, key="site-reset-summary")
            return result

        c = plan.counts
        result.approval = request_approval(
            plan, expected_confirmation=slug,
            what=[f"{c['categories']} categories", f"{c['authors']} authors",
                  f"{c['pages']} pages", f"{c['content_types']} content types",
                  f"{c['seo_entries']} SEO entries",
                  f"{c['posts_losing_author']} draft/scheduled post(s) lose their author, "
                  f"{c['posts_losing_content_type']} their content type, "
                  f"{c['posts_losing_category_links']} category link(s) go",
                  f"site '{slug}' goes back to setup status 'draft' with no active blueprint",
                  "tags, posts, media, users, domains, settings, blueprints, AI jobs stay"],
            snapshot_uri=snapshot.uri, timeout_s=approval_timeout_s,
            approved_plan_hash=approved_plan_hash, approved_by=approved_by)

        result.applied = apply_site_reset(target, site, snapshot.uri, plan.plan_hash,
                                          verified.file_sha256, result.approval, started)
        left = verify_site_reset(target, site)
        result.after_totals = left
        create_table_artifact([{"what": k, "deleted": result.applied.get(k, 0)} for k in HEADLINE],
                              key="site-reset-deleted", description=f"deleted from site {slug}")
        counts_table(plan, result.applied, key="site-reset-counts")
        summary_markdown(result, key="site-reset-summary")
        structure_left = {k: v for k, v in left.items() if k != "published_posts" and v}
        if structure_left:
            raise SafeopsError(f"Reset committed but rows remain afterwards: {structure_left}.")
        return result
