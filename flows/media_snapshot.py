"""Snapshot and verify a Medusa catalog's image references.

`snapshot-product-media` writes every image reference (image rows, variant
links, product and variant thumbnails) to a JSON snapshot in the store;
`verify-product-media-snapshot` reads one back and checks format, checksum,
totals, source database, live id sets and, on request, the objects in MinIO.

Run:  uv run safeops media snapshot
      uv run safeops media verify ./exports/medusa-media-snapshot-<stamp>.json
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from safeops.core.errors import ForeignSnapshot, SnapshotInvalid
from safeops.core.models import SnapshotRef, VerifyReport
from safeops.core.settings import validate_target
from tasks.common.artifacts import snapshot_link, verify_table
from tasks.common.retention import prune_snapshots
from tasks.media.snapshot import SNAPSHOT_PREFIX, take_media_snapshot
from tasks.media.verify import verify_media_snapshot


@flow(name="snapshot-product-media")
def snapshot_product_media(
    target: str = "medusa", snapshot_location: str | None = None, keep: int | None = None
) -> SnapshotRef:
    """Write every image reference of the catalog to a new snapshot (read-only).

    Args:
        target: Which database: 'medusa' reads MEDUSA_DATABASE_URL or the Prefect Secret
            block 'medusa-database-url'. A name, never a URL.
        snapshot_location: Folder or s3://bucket/prefix; SAFEOPS_SNAPSHOT_URI when empty.
        keep: Retention: keep the newest N media snapshots in that location and delete older
            ones, except any referenced by an audit row of the last 30 days. Empty: keep all.
    """
    validate_target(target)
    ref = take_media_snapshot(target, snapshot_location)
    snapshot_link(ref.uri, key="media-snapshot", announce="snapshot")
    get_run_logger().info("snapshot %s: %s", ref.uri, ref.totals)
    if keep is not None:
        outcome = prune_snapshots(target, snapshot_location, SNAPSHOT_PREFIX, keep)
        create_markdown_artifact(
            f"Retention keep={keep}: pruned {len(outcome['pruned'])}, kept "
            f"{len(outcome['kept'])}, protected by recent audit rows "
            f"{len(outcome['kept_for_audit'])}.\n\n"
            + "\n".join(f"- pruned `{u}`" for u in outcome["pruned"]),
            key="media-snapshot-retention",
        )
        get_run_logger().info("retention: pruned %s", outcome["pruned"])
    return ref


@flow(name="verify-product-media-snapshot")
def verify_product_media_snapshot(
    snapshot_uri: str, target: str = "medusa", check_objects: bool = False
) -> VerifyReport:
    """Check a snapshot; the run fails (CLI exit 3) naming each failed check.

    Args:
        snapshot_uri: The snapshot to check (path or s3:// URI).
        target: Which database to compare with (a name such as 'medusa', never a URL).
        check_objects: Also HEAD every image's object in SAFEOPS_MEDIA_BUCKET.
    """
    validate_target(target)
    report = verify_media_snapshot(target, snapshot_uri, check_objects=check_objects)
    verify_table(report, key="media-snapshot-verify")
    if not report.ok:
        failed = [c.name for c in report.checks if not c.ok]
        error = ForeignSnapshot if failed == ["source"] else SnapshotInvalid
        raise error(
            f"Snapshot {snapshot_uri} failed the {', '.join(failed)} check(s): {report.failures()}"
        )
    return report


if __name__ == "__main__":
    print(snapshot_product_media().uri)
