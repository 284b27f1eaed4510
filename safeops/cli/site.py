"""``safeops site ...``: check, reset and restore one CMS site's structure."""

from __future__ import annotations

from typing import Annotated

import typer

from safeops.cli.options import (
    CmsTarget,
    PlanSignature,
    Reason,
    SavedPlan,
    SigningKey,
    SiteId,
    SnapshotUri,
    Timeout,
    Untraced,
    handle_errors,
)
from safeops.cli.options import Live as LiveFlag
from safeops.cli.options import Yes as YesFlag

group = typer.Typer(no_args_is_help=True, help="CMS site structure: check, reset, restore.")


@group.command("check")
@handle_errors
def site_check(site_id: SiteId, target: CmsTarget = "cms") -> None:
    """Exit 0 when the site may be reset, 3 (with the reason) when it may not."""
    from safeops.cli.preflight import before_prefect

    before_prefect(target, site_id=site_id)
    from flows.site_check import check_site_reset
    from safeops.console.runner import run_command
    from safeops.core.errors import ResetNotAllowed

    verdict = run_command(check_site_reset, {"site_id": site_id, "target": target})
    if not verdict["canReset"]:
        raise ResetNotAllowed(verdict["reason"])
    print(verdict["reason"], flush=True)


@group.command("reset")
@handle_errors
def site_reset(
    site_id: SiteId,
    live: LiveFlag = False,
    yes: YesFlag = False,
    plan: SavedPlan = None,
    target: CmsTarget = "cms",
    reason: Reason = None,
    timeout: Timeout = 3600,
    plan_signature: PlanSignature = None,
    key: SigningKey = None,
) -> None:
    """Delete the site's categories, authors, pages, content types and their SEO meta."""
    from safeops.cli.preflight import before_prefect

    before_prefect(target, site_id=site_id)
    from flows.site_reset import reset_site_structure
    from safeops.console.runner import report_run, run_command

    report_run(
        run_command(
            reset_site_structure,
            {
                "site_id": site_id,
                "target": target,
                "dry_run": not live,
                "approval_timeout_s": timeout,
            },
            live=live,
            yes=yes,
            plan=plan,
            reason=reason,
            plan_signature=plan_signature,
            key=key,
        )
    )


@group.command("restore")
@handle_errors
def site_restore(
    uri: SnapshotUri,
    live: LiveFlag = False,
    yes: YesFlag = False,
    plan: SavedPlan = None,
    target: CmsTarget = "cms",
    reason: Reason = None,
    timeout: Timeout = 3600,
    skip_conflicts: Annotated[
        bool,
        typer.Option(
            "--skip-conflicts",
            help="Restore around rows created since the reset instead of refusing.",
        ),
    ] = False,
    untraced: Untraced = False,
    plan_signature: PlanSignature = None,
    key: SigningKey = None,
) -> None:
    """Undo a reset from its snapshot: rows, post links and blueprint state."""
    from safeops.cli.preflight import before_prefect

    before_prefect(target, snapshot_uri=uri)
    print(f"snapshot: {uri}", flush=True)  # after the checks: a refused URI prints no such line
    from flows.site_restore import restore_site_structure
    from safeops.console.runner import report_run, run_command

    report_run(
        run_command(
            restore_site_structure,
            {
                "snapshot_uri": uri,
                "target": target,
                "dry_run": not live,
                "skip_conflicts": skip_conflicts,
                "allow_untraced": untraced,
                "approval_timeout_s": timeout,
            },
            live=live,
            yes=yes,
            plan=plan,
            reason=reason,
            plan_signature=plan_signature,
            key=key,
        )
    )
