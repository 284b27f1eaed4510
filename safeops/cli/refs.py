"""``safeops media migrate-refs`` and ``safeops media upload`` (ImageRefs in MinIO).

``migrate-refs`` runs the ``migrate-product-media-refs`` flow like every other
command (dry run unless ``--live``; approval at the terminal, ``--yes`` or
``--plan``). ``upload`` is a quick command without a flow: it checks the files
and the product, uploads under new keys, then appends the refs in one
transaction with an audit row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from safeops.cli.media import group
from safeops.cli.options import Live as LiveFlag
from safeops.cli.options import (
    MediaTarget,
    PlanSignature,
    Reason,
    SavedPlan,
    SigningKey,
    Timeout,
    handle_errors,
)
from safeops.cli.options import Yes as YesFlag


@group.command("migrate-refs")
@handle_errors
def media_migrate_refs(
    snapshot: Annotated[
        str | None,
        typer.Option(
            "--snapshot",
            help="Media snapshot (path or s3:// URI) to take the images from, "
            "e.g. the one a purge wrote; default: the live image rows.",
        ),
    ] = None,
    live: LiveFlag = False,
    yes: YesFlag = False,
    plan: SavedPlan = None,
    target: MediaTarget = "medusa",
    reason: Reason = None,
    timeout: Timeout = 3600,
    plan_signature: PlanSignature = None,
    key: SigningKey = None,
) -> None:
    """Copy product images to timestamp+UUID keys and write metadata.media.refs.

    Dry run unless --live. Source objects are never changed or deleted; a re-run
    copies nothing already referenced and reuses copies an interrupted run left."""
    from safeops.cli.preflight import before_prefect

    if snapshot:
        print(f"snapshot: {snapshot}", flush=True)
    before_prefect(target, snapshot_uri=snapshot or None)
    from flows.media_refs import migrate_product_media_refs
    from safeops.console.runner import report_run, run_command

    report_run(
        run_command(
            migrate_product_media_refs,
            {
                "target": target,
                "snapshot_uri": snapshot or None,
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


@group.command("upload")
@handle_errors
def media_upload(
    product_id: Annotated[str, typer.Argument(help="The product (prod_…) to add images to.")],
    files: Annotated[list[Path], typer.Argument(help="Local image files, in display order.")],
    target: MediaTarget = "medusa",
) -> None:
    """Upload files as new ImageRefs of a product (appended after its current refs)."""
    from safeops.cli.preflight import before_prefect

    before_prefect(target)
    from safeops.console.runner import current_user
    from tasks.media.refs.upload import upload_media

    for ref in upload_media(target, product_id, list(files), approver=current_user()):
        print(f"uploaded: {ref.key} {ref.contentType} {ref.size} bytes rank {ref.rank}", flush=True)
