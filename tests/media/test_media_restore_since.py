"""A restore respects what Medusa did after the purge (issue 14, item 2).

A product soft-deleted since gets its images back soft-deleted with it and no
thumbnail; a product that gained images since keeps them first and gets the
restored ones after them, in snapshot order. Real PostgreSQL, the real flows
in-process, assertions on rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg

from flows.media_purge import purge_product_media
from flows.media_restore import restore_product_media
from safeops.core.models import RunResult
from tests.conftest import MEDUSA_TABLES, answer_approval, approve_as
from tests.pg import execute, scalar, table_checksums

NEW_IMAGE = "img_01NEWSINCETHEPURGE000000000"
NEW_URL = "http://localhost:9000/medusa-media/new-key-scheme/since.webp"


def rows(url: str, sql: str, *params: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        return conn.execute(sql, params).fetchall()


def image_rows(url: str, where: str, *params: object) -> list[tuple[Any, ...]]:
    return rows(
        url,
        "SELECT id, url, metadata::text, rank, product_id, created_at, updated_at, "
        f"deleted_at FROM image WHERE {where} ORDER BY id",
        *params,
    )


def purge_live() -> tuple[RunResult, str]:
    """A live purge; returns it with its snapshot's URI."""
    with answer_approval(approve_as()) as seen:
        result = purge_product_media(dry_run=False)
    assert len(seen) == 1 and result.snapshot_uri
    return result, result.snapshot_uri


def restore_twice(url: str, uri: str) -> tuple[RunResult, list[dict[str, Any]]]:
    """Restore live, then again: the second run finds nothing to do and changes nothing."""
    with answer_approval(approve_as()) as seen:
        restored = restore_product_media(uri, dry_run=False)
    assert len(seen) == 1
    after = table_checksums(url, MEDUSA_TABLES)
    with answer_approval(approve_as()) as again_seen:
        again = restore_product_media(uri, dry_run=False)
    assert again_seen == []  # no approval pause for an empty plan
    assert again.message.startswith("Nothing to restore") and again.applied == {}
    assert again.plan.counts["images"] == 0
    assert again.plan.counts["images_after_newer_images"] == 0
    assert again.plan.counts["products_with_newer_images"] == 0
    assert again.plan.counts["images_product_soft_deleted"] == 0
    assert table_checksums(url, MEDUSA_TABLES) == after
    return restored, seen


def test_restore_under_a_product_soft_deleted_since(medusa_url: str, exports: Path) -> None:
    # A live product with a thumbnail, a variant thumbnail and at least 3 images.
    product = str(
        scalar(
            medusa_url,
            """
        SELECT p.id FROM product p WHERE p.deleted_at IS NULL AND p.thumbnail IS NOT NULL
          AND EXISTS (SELECT 1 FROM product_variant v WHERE v.product_id = p.id
                      AND v.thumbnail IS NOT NULL)
          AND (SELECT count(*) FROM image i WHERE i.product_id = p.id) >= 3
        ORDER BY p.id LIMIT 1""",
        )
    )
    # One of its images was already soft-deleted when the snapshot was taken.
    own_deleted = str(
        scalar(medusa_url, "SELECT min(id) FROM image WHERE product_id = %s", product)
    )
    execute(
        medusa_url,
        "UPDATE image SET deleted_at = '2026-01-02T03:04:05Z' WHERE id = %s",
        own_deleted,
    )
    # A product soft-deleted before the snapshot (the seed has one) comes back as it was.
    deleted_before = str(
        scalar(medusa_url, "SELECT min(id) FROM product WHERE deleted_at IS NOT NULL")
    )
    execute(
        medusa_url,
        "UPDATE product SET thumbnail = %s WHERE id = %s",
        "http://localhost:9000/medusa-media/deleted-before.jpg",
        deleted_before,
    )
    images_before = image_rows(medusa_url, "product_id = %s", product)
    others_before = image_rows(medusa_url, "product_id <> %s", product)
    links_before = rows(medusa_url, "SELECT l.* FROM product_variant_product_image l ORDER BY l.id")
    thumbs_before = dict(
        rows(medusa_url, "SELECT id, thumbnail FROM product WHERE thumbnail IS NOT NULL")
    )
    vthumbs_before = dict(
        rows(medusa_url, "SELECT id, thumbnail FROM product_variant WHERE thumbnail IS NOT NULL")
    )
    own_vthumbs = int(
        scalar(
            medusa_url,
            "SELECT count(*) FROM product_variant "  # type: ignore[call-overload]
            "WHERE product_id = %s AND thumbnail IS NOT NULL",
            product,
        )
    )
    assert len(images_before) >= 3 and own_vthumbs >= 1

    purge, uri = purge_live()
    # Deleting a product in Medusa soft-deletes it with its variants and images.
    execute(
        medusa_url,
        """
        WITH p AS (UPDATE product SET deleted_at = now() WHERE id = %s RETURNING deleted_at),
             v AS (UPDATE product_variant SET deleted_at = (SELECT deleted_at FROM p)
                   WHERE product_id = %s RETURNING 1)
        UPDATE image SET deleted_at = (SELECT deleted_at FROM p)
        WHERE product_id = %s AND deleted_at IS NULL""",
        product,
        product,
        product,
    )
    product_deleted_at = rows(medusa_url, "SELECT deleted_at FROM product WHERE id = %s", product)[
        0
    ][0]

    # Dry run: the plan says it, nothing changes.
    purged = table_checksums(medusa_url, MEDUSA_TABLES)
    dry = restore_product_media(uri)
    assert dry.dry_run and not dry.applied
    assert table_checksums(medusa_url, MEDUSA_TABLES) == purged
    counts = dry.plan.counts
    assert counts["images"] == purge.applied["images"]  # all of them come back
    assert counts["images_product_soft_deleted"] == len(images_before)
    assert counts["products_soft_deleted"] == 1
    assert counts["thumbnails_product_soft_deleted"] == 1 + own_vthumbs
    assert counts["product_thumbnails"] == purge.applied["product_thumbnails"] - 1
    assert counts["variant_thumbnails"] == purge.applied["variant_thumbnails"] - own_vthumbs
    assert counts["images_product_gone"] == 0 and counts["products_with_newer_images"] == 0

    restored, seen = restore_twice(medusa_url, uri)
    assert restored.plan.plan_hash == dry.plan.plan_hash
    what = "\n".join(seen[0]["what"])
    assert (
        f"of which {len(images_before)} come back soft-deleted with their product: "
        "1 product(s) soft-deleted since the snapshot"
    ) in what
    assert "skip " + str(1 + own_vthumbs) + " thumbnails product soft deleted" in what

    # Its images: back with their ids and content, soft-deleted with the product
    # (the one deleted before keeps its own deleted_at).
    expected = [
        (*row[:7], row[7] if row[0] == own_deleted else product_deleted_at) for row in images_before
    ]
    assert image_rows(medusa_url, "product_id = %s", product) == expected
    assert (
        rows(medusa_url, "SELECT deleted_at FROM image WHERE id = %s", own_deleted)[0][
            0
        ].isoformat()
        == "2026-01-02T03:04:05+00:00"
    )
    # Every other image, and every link (the deleted product's too), exactly as before.
    assert image_rows(medusa_url, "product_id <> %s", product) == others_before
    assert (
        rows(medusa_url, "SELECT l.* FROM product_variant_product_image l ORDER BY l.id")
        == links_before
    )
    # No thumbnail on the deleted product or its variants; every other one back.
    thumbs_after = dict(
        rows(medusa_url, "SELECT id, thumbnail FROM product WHERE thumbnail IS NOT NULL")
    )
    assert thumbs_after == {k: v for k, v in thumbs_before.items() if k != product}
    assert deleted_before in thumbs_after  # soft-deleted before the snapshot: as it was
    assert image_rows(medusa_url, "product_id = %s", deleted_before) == [
        r for r in others_before if r[4] == deleted_before
    ]
    vthumbs_after = dict(
        rows(medusa_url, "SELECT id, thumbnail FROM product_variant WHERE thumbnail IS NOT NULL")
    )
    own_variants = {
        r[0]
        for r in rows(medusa_url, "SELECT id FROM product_variant WHERE product_id = %s", product)
    }
    assert vthumbs_after == {k: v for k, v in vthumbs_before.items() if k not in own_variants}


def test_restore_after_images_added_since(medusa_url: str, exports: Path) -> None:
    product = str(
        scalar(
            medusa_url,
            """
        SELECT p.id FROM product p WHERE p.deleted_at IS NULL AND p.thumbnail IS NOT NULL
          AND (SELECT count(*) FROM image i WHERE i.product_id = p.id) >= 4
        ORDER BY p.id LIMIT 1""",
        )
    )
    # Two of its images share a rank, so the snapshot order is (rank, id).
    execute(
        medusa_url,
        "UPDATE image SET rank = 1 WHERE id = (SELECT max(id) FROM image WHERE product_id = %s)",
        product,
    )
    images_before = image_rows(medusa_url, "product_id = %s", product)
    others_before = image_rows(medusa_url, "product_id <> %s", product)
    snapshot_order = [r[0] for r in sorted(images_before, key=lambda r: (r[3], r[0]))]

    purge, uri = purge_live()
    # Through Medusa: a new image at rank 0 and the product's thumbnail set to it.
    execute(
        medusa_url,
        "INSERT INTO image (id, url, rank, product_id) VALUES (%s, %s, 0, %s)",
        NEW_IMAGE,
        NEW_URL,
        product,
    )
    execute(medusa_url, "UPDATE product SET thumbnail = %s WHERE id = %s", NEW_URL, product)
    new_image = image_rows(medusa_url, "id = %s", NEW_IMAGE)

    purged = table_checksums(medusa_url, MEDUSA_TABLES)
    dry = restore_product_media(uri)
    assert table_checksums(medusa_url, MEDUSA_TABLES) == purged
    counts = dry.plan.counts
    assert counts["products_with_newer_images"] == 1
    assert counts["images_after_newer_images"] == len(images_before)
    assert counts["images"] == purge.applied["images"]
    assert counts["product_thumbnails_kept"] == 1
    assert counts["images_product_soft_deleted"] == 0

    restored, seen = restore_twice(medusa_url, uri)
    what = "\n".join(seen[0]["what"])
    assert (
        f"of which {len(images_before)} follow, in snapshot order, the images "
        "1 product(s) gained since"
    ) in what

    # The newer image keeps rank 0; the restored ones follow in snapshot order,
    # everything else about them as it was.
    assert image_rows(medusa_url, "id = %s", NEW_IMAGE) == new_image
    after = {
        r[0]: r for r in image_rows(medusa_url, "product_id = %s AND id <> %s", product, NEW_IMAGE)
    }
    assert sorted(after) == sorted(r[0] for r in images_before)
    assert [after[i][3] for i in snapshot_order] == list(range(1, len(images_before) + 1))
    for row in images_before:
        assert after[row[0]][:3] + after[row[0]][4:] == row[:3] + row[4:]
    assert image_rows(medusa_url, "product_id <> %s", product) == others_before
    assert scalar(medusa_url, "SELECT thumbnail FROM product WHERE id = %s", product) == NEW_URL
    assert restored.applied["images"] == purge.applied["images"]
