"""``safeops media migrate-refs`` and ``safeops media upload`` (ImageRefs in MinIO).

``migrate-refs`` runs the ``migrate-product-media-refs`` flow like every other
command (dry run unless ``--live``; approval at the terminal, ``--yes`` or
``--plan``). ``upload`` is a quick command without a flow: it checks the files
and the product, uploads under new keys, then appends the refs in one
transaction with an audit row.
"""

from __future__ import annotations

from pathlib import Path

import typer

SNAPSHOT = typer.Option(None, "--snapshot", help="Media snapshot (path or s3:// URI) to take "
                        "the images from, e.g. the one a purge wrote; default: the live "
                        "image rows.")
PRODUCT_ID = typer.Argument(..., help="The product (prod_…) to add images to.")
FILES = typer.Argument(..., help="Local image files, in display order.")


def register(media: typer.Typer) -> None:
    """Attach the ImageRef commands to the ``media`` group."""
    # Imported here: safeops.cli imports this module while it is being defined.
    import safeops.cli.app as cli

    @media.command("migrate-refs")
    def media_migrate_refs(
            snapshot: str = SNAPSHOT,
            live: bool = cli.LIVE, yes: bool = cli.YES, plan: str = cli.PLAN,
            target: str = cli.TARGET, reason: str = cli.REASON,
            timeout: int = cli.TIMEOUT) -> None:
        """Copy product images to timestamp+UUID keys and write metadata.media.refs.

        Dry run unless --live. Source objects are never changed or deleted; a re-run
        copies nothing already referenced and reuses copies an interrupted run left."""
        def action() -> None:
            from flows.media_refs import migrate_product_media_refs

            if snapshot:
                print(f"snapshot: {snapshot}", flush=True)
            result = cli._run(migrate_product_media_refs,
                              {"target": target, "snapshot_uri": snapshot or None,
                               "dry_run": not live, "approval_timeout_s": timeout},
                              live=live, yes=yes, plan=plan, reason=reason)
            cli._report_run(result)
        cli.guarded(action)

    @media.command("upload")
    def media_upload(
            product_id: str = PRODUCT_ID, files: list[Path] = FILES,
            target: str = cli.TARGET) -> None:
        """Upload files as new ImageRefs of a product (appended after its current refs)."""
        def action() -> None:
            from safeops.cli.runner import current_user
            from tasks.media.refs.upload import upload_media

            refs = upload_media(target, product_id, list(files), approver=current_user())
            for ref in refs:
                print(f"uploaded: {ref.key} {ref.contentType} {ref.size} bytes "
                      f"rank {ref.rank}", flush=True)
        cli.guarded(action)
