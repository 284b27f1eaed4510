"""Snapshot a Medusa catalog's image references (read-only).

`snapshot-product-media` writes every image reference (image rows, variant
links, product and variant thumbnails) to a JSON snapshot in the store, and
optionally prunes old ones (retention); `verify-product-media-snapshot` checks one.

Run:  uv run safeops media snapshot
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from safeops.core.models import SnapshotRef
from safeops.core.settings import validate_target
from tasks.common.artifacts import snapshot_link
from tasks.common.retention import prune_snapshots
from tasks.media.snapshot import SNAPSHOT_PREFIX, take_media_snapshot


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


if __name__ == "__main__":
    print(snapshot_product_media().uri)
