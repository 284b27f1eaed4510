"""The media purge, end to end, against real PostgreSQL and Prefect."""

from __future__ import annotations

from pathlib import Path

from flows.media_purge import purge_product_media
from flows.media_restore import restore_product_media
from tests.conftest import MEDUSA_TABLES, answer_approval, approve_as
from tests.pg import STAMPS, scalar, table_checksums


def test_full_chain_purge_then_restore_gives_identical_tables(
    medusa_url: str, exports: Path
) -> None:
    before = table_checksums(medusa_url, MEDUSA_TABLES, STAMPS)
    images_before = scalar(medusa_url, "SELECT count(*) FROM image")
    assert images_before and int(images_before) > 100  # type: ignore[call-overload]

    with answer_approval(approve_as()) as seen:
        result = purge_product_media(dry_run=False)
    assert len(seen) == 1
    assert result.applied["images"] == images_before
    assert scalar(medusa_url, "SELECT count(*) FROM image") == 0
    assert scalar(medusa_url, "SELECT count(*) FROM product_variant_product_image") == 0
    assert scalar(medusa_url, "SELECT count(*) FROM product WHERE thumbnail IS NOT NULL") == 0
    assert result.after_totals["totalImages"] == 0
    assert result.snapshot_uri and Path(result.snapshot_uri).is_file()

    with answer_approval(approve_as()):
        restored = restore_product_media(result.snapshot_uri, dry_run=False)
    assert restored.applied["images"] == images_before
    # All seven tables as they were, but for the timestamp the thumbnail updates move.
    assert table_checksums(medusa_url, MEDUSA_TABLES, STAMPS) == before
