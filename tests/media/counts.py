"""What the catalog holds, counted with hand-written SQL (not the product's queries), so a
plan's or a script's counts are checked against an independent reading."""

from __future__ import annotations

from collections.abc import Sequence

from tests.pg import scalar

MEDIA_COUNT_SQL = {
    "products": "SELECT count(*) FROM product p WHERE p.thumbnail IS NOT NULL "
    "OR EXISTS (SELECT 1 FROM image i WHERE i.product_id = p.id) "
    "OR EXISTS (SELECT 1 FROM product_variant v WHERE v.product_id = p.id "
    "AND v.thumbnail IS NOT NULL)",
    "images": "SELECT count(*) FROM image",
    "variant_links": "SELECT count(*) FROM product_variant_product_image",
    "product_thumbnails": "SELECT count(*) FROM product WHERE thumbnail IS NOT NULL",
    "variant_thumbnails": "SELECT count(*) FROM product_variant "
    "WHERE product_id IS NOT NULL AND thumbnail IS NOT NULL",
}


def media_counts(url: str, names: Sequence[str] = tuple(MEDIA_COUNT_SQL)) -> dict[str, int]:
    """The ``names`` counts (default: all of them, the purge plan's keys)."""
    return {name: int(scalar(url, MEDIA_COUNT_SQL[name])) for name in names}  # type: ignore[call-overload]
