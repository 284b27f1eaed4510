"""Reset one CMS site's blueprint structure, only while it has no published post.

check → plan + snapshot (one consistent read, one rendering of each row) → verify
the stored file is the bytes that read rendered →
(dry run stops here) → approval (type the site's slug) → apply in one
transaction (the snapshot file must still be the verified one; lock the site,
re-check the guard, delete in dependency order while proving the deleted rows
hash to the approved plan, reset the blueprint state, prove nothing else was
written, audit) → verify: no structure and no orphan SEO rows left.
`restore-site-structure` undoes it.

Run:  uv run safeops site reset <site-id>            # dry run
      uv run safeops site reset <site-id> --live
"""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_table_artifact

from safeops.core.errors import ResetNotAllowed
from safeops.core.models import RunResult
from safeops.core.settings import validate_target
from tasks.common.artifacts import snapshot_link
from tasks.common.destructive import destructive_run
from tasks.site.check import check_site, parse_site_id
from tasks.site.reset import apply_site_reset, verify_site_reset
from tasks.site.snapshot import snapshot_site, verify_site_snapshot
from tasks.site.structure import HEADLINE

FLOW = "reset-site-structure"


@flow(name=FLOW)
def reset_site_structure(
    site_id: str,
    target: str = "cms",
    dry_run: bool = True,
    approved_plan_hash: str | None = None,
    approved_by: str | None = None,
    approval_timeout_s: int = 3600,
    snapshot_location: str | None = None,
    approved_plan_signature: str | None = None,
) -> RunResult:
    """Delete a site's categories, authors, pages, content types and their SEO meta.

    Args:
        site_id: The site's UUID.
        target: Which database: 'cms' reads CMS_DATABASE_URL or the Prefect Secret block
            'cms-database-url'. A name, never a URL.
        dry_run: True (default) stops after the verified snapshot and plan; nothing changes.
        approved_plan_hash: Plan hash of a reviewed dry run; replaces the approval pause when
            it equals this run's plan, and a different hash is refused.
        approved_by: Who reviewed that saved plan (recorded in the audit row).
        approved_plan_signature: The signed saved plan (``safeops sign-plan``): needed with
            approved_plan_hash when SAFEOPS_ALLOWED_SIGNERS is set.
        approval_timeout_s: How long the approval pause waits (nothing changes on timeout).
        snapshot_location: Folder or s3://bucket/prefix; SAFEOPS_SNAPSHOT_URI when empty.
    """
    validate_target(target)
    site = parse_site_id(site_id)
    with destructive_run(
        FLOW,
        target,
        dry_run=dry_run,
        approved_plan_hash=approved_plan_hash,
        approved_by=approved_by,
        approval_timeout_s=approval_timeout_s,
        approved_plan_signature=approved_plan_signature,
        artifacts="site-reset",
        scope=(site,),
    ) as run:
        verdict = check_site(target, site)
        if not verdict["canReset"]:
            raise ResetNotAllowed(verdict["reason"])
        slug = verdict["siteSlug"]

        snapshot, plan = snapshot_site(target, site, snapshot_location)
        snapshot_link(snapshot.uri, key="site-reset-snapshot", announce="snapshot")
        verified = verify_site_snapshot(target, snapshot.uri, plan.plan_hash, written=snapshot)
        if run.planned(
            plan,
            snapshot.uri,
            nothing_to_do=plan.is_empty,
            nothing_message=f"Nothing to reset: site {slug} holds no blueprint "
            "structure and its blueprint state is reset already.",
        ):
            return run.require_result()

        c = plan.counts
        run.approve(
            confirmation=slug,
            what=[
                f"{c['categories']} categories",
                f"{c['authors']} authors",
                f"{c['pages']} pages",
                f"{c['content_types']} content types",
                f"{c['seo_entries']} SEO entries",
                f"{c['posts_losing_author']} draft/scheduled post(s) lose their "
                f"author, {c['posts_losing_content_type']} their content type, "
                f"{c['posts_losing_category_links']} category link(s) go",
                f"site '{slug}' goes back to setup status 'draft' with no active blueprint",
                "tags, posts, media, users, domains, settings, blueprints, AI jobs stay",
            ],
        )
        run.applied(
            apply_site_reset(
                target,
                site,
                snapshot.uri,
                plan.plan_hash,
                verified.file_sha256,
                run.approval,
                run.started,
            )
        )

        left = verify_site_reset(target, site)
        result = run.require_result()
        result.after_totals = left
        create_table_artifact(
            [{"what": k, "deleted": result.applied.get(k, 0)} for k in HEADLINE],
            key="site-reset-deleted",
            description=f"deleted from site {slug}",
        )
        structure_left = {k: v for k, v in left.items() if k != "published_posts" and v}
        return run.finish(
            problem=f"Reset committed but rows remain afterwards: {structure_left}."
            if structure_left
            else None
        )
