"""Check a media snapshot: format, checksum, totals, source database, live id sets
and, on request, the objects in MinIO; the run fails (CLI exit 3) naming each failed check.

Run:  uv run safeops media verify ./exports/medusa-media-snapshot-<stamp>.json
"""

from __future__ import annotations

from prefect import flow

from safeops.core.models import VerifyReport
from safeops.core.settings import validate_target
from tasks.common.artifacts import verify_table
from tasks.media.verify import refuse_unless_verified, verify_media_snapshot


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
    refuse_unless_verified(report, f"Snapshot {snapshot_uri}", "")
    return report
