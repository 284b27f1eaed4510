"""``safeops media ...``: snapshot, verify, purge and restore a Medusa catalog's media."""

from __future__ import annotations

from typing import Annotated

import typer

from safeops.cli.options import Live as LiveFlag
from safeops.cli.options import (
    MediaTarget,
    PlanSignature,
    Reason,
    SavedPlan,
    SigningKey,
    SnapshotUri,
    Timeout,
    Untraced,
    handle_errors,
)
from safeops.cli.options import Yes as YesFlag

group = typer.Typer(
    no_args_is_help=True, help="Medusa product media: snapshot, verify, purge, restore."
)


@group.command("snapshot")
@handle_errors
def media_snapshot(
    target: MediaTarget = "medusa",
    to: Annotated[
        str | None,
        typer.Option("--to", help="Folder or s3://bucket/prefix (default SAFEOPS_SNAPSHOT_URI)."),
    ] = None,
) -> None:
    """Write every image reference to a new JSON snapshot (read-only)."""
    from safeops.cli.preflight import before_prefect

    before_prefect(target, location=to)
    from flows.media_snapshot import snapshot_product_media
    from safeops.console.runner import console, run_command

    ref = run_command(snapshot_product_media, {"target": target, "snapshot_location": to})
    console.print(", ".join(f"{k}={v}" for k, v in ref.totals.items()))


@group.command("verify")
@handle_errors
def media_verify(
    uri: SnapshotUri,
    target: MediaTarget = "medusa",
    check_objects: Annotated[
        bool, typer.Option("--check-objects", help="HEAD every image's object.")
    ] = False,
) -> None:
    """Check a snapshot's format, checksum, totals, source and live id sets (exit 3 if not)."""
    from safeops.cli.preflight import before_prefect

    before_prefect(target, snapshot_uri=uri)
    from flows.media_verify import verify_product_media_snapshot
    from safeops.console.runner import console, run_command

    report = run_command(
        verify_product_media_snapshot,
        {"snapshot_uri": uri, "target": target, "check_objects": check_objects},
    )
    for check in report.checks:
        console.print(f"ok  {check.name}: {check.detail}")


@group.command("purge")
@handle_errors
def media_purge(
    live: LiveFlag = False,
    yes: YesFlag = False,
    plan: SavedPlan = None,
    target: MediaTarget = "medusa",
    reason: Reason = None,
    timeout: Timeout = 3600,
    plan_signature: PlanSignature = None,
    key: SigningKey = None,
) -> None:
    """Remove every image reference; MinIO files stay. Dry run unless --live."""
    from safeops.cli.preflight import before_prefect

    before_prefect(target)
    from flows.media_purge import purge_product_media
    from safeops.console.runner import report_run, run_command

    report_run(
        run_command(
            purge_product_media,
            {"target": target, "dry_run": not live, "approval_timeout_s": timeout},
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
def media_restore(
    uri: SnapshotUri,
    live: LiveFlag = False,
    yes: YesFlag = False,
    plan: SavedPlan = None,
    target: MediaTarget = "medusa",
    reason: Reason = None,
    timeout: Timeout = 3600,
    force: Annotated[
        bool, typer.Option("--force", help="Restore a snapshot taken from another database.")
    ] = False,
    untraced: Untraced = False,
    plan_signature: PlanSignature = None,
    key: SigningKey = None,
) -> None:
    """Put back what a snapshot holds (ids, urls, ranks, timestamps). Dry run unless --live."""
    from safeops.cli.preflight import before_prefect

    before_prefect(target, snapshot_uri=uri)
    print(f"snapshot: {uri}", flush=True)  # after the checks: a refused URI prints no such line
    from flows.media_restore import restore_product_media
    from safeops.console.runner import report_run, run_command

    report_run(
        run_command(
            restore_product_media,
            {
                "snapshot_uri": uri,
                "target": target,
                "dry_run": not live,
                "force": force,
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
