"""The purge plan people approve: exact counts and a digest of every affected row.

Computed where the rows are read: by the snapshot, in its own consistent view
(so the plan describes exactly the rows the file holds), by a plan task for a
saved plan, and by the apply under its lock (the drift check).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, text

from safeops.core.db import fingerprint
from safeops.core.errors import DriftDetected
from safeops.core.models import Plan, plan_hash_of
from tasks.media.bulk import tune_for_bulk

COUNT_SCOPE_SQL = text("""
SELECT count(*) FROM product p
WHERE p.thumbnail IS NOT NULL
   OR EXISTS (SELECT 1 FROM image i WHERE i.product_id = p.id)
   OR EXISTS (SELECT 1 FROM product_variant v WHERE v.product_id = p.id AND v.thumbnail IS NOT NULL)
""")


def count_products_in_scope(conn: Connection) -> int:
    tune_for_bulk(conn)
    return int(conn.execute(COUNT_SCOPE_SQL).scalar_one())


# Each table's count and a digest of every row's full text (its id included):
# approving a plan approves those exact rows, and the same rows always give the
# same hash. The digest is a sum of 64-bit hashes, so it needs no sort and
# parallel workers can share it (numeric sum: exact, order-free). A row that
# changes changes the sum unless two 64-bit hashes collide (2^-64 per change):
# the digest guards against a catalog that moved, not against someone who can
# write to the catalog anyway. The row text is the snapshot's own JSON of it.
PURGE_PLAN_SQL = text("""
SELECT 'images', count(*), sum(hashtextextended(row_to_json(i)::text, 0))::text FROM image i
UNION ALL
SELECT 'variant_links', count(*), sum(hashtextextended(row_to_json(l)::text, 0))::text
  FROM product_variant_product_image l
UNION ALL
SELECT 'product_thumbnails', count(*),
       sum(hashtextextended(json_build_array(id, thumbnail)::text, 0))::text
  FROM product WHERE thumbnail IS NOT NULL
UNION ALL
SELECT 'variant_thumbnails', count(*),
       sum(hashtextextended(json_build_array(id, thumbnail)::text, 0))::text
  FROM product_variant WHERE thumbnail IS NOT NULL AND product_id IS NOT NULL
""")


def purge_plan(conn: Connection, target: str, *, count_products: bool = True) -> Plan:
    """The live state the purge removes; the hash binds an approval to it.

    ``count_products`` adds the number of products touched, for people; the hash
    never covers it, so an apply re-deriving the plan under its lock skips it."""
    tune_for_bulk(conn)
    rows = conn.execute(PURGE_PLAN_SQL).all()
    counts = {name: int(n) for name, n, _ in rows}
    parts = {name: [int(n), digest or "0"] for name, n, digest in rows}
    if count_products:
        counts = {"products": count_products_in_scope(conn), **counts}
    return _plan(conn, target, counts, parts)


def plan_of_digests(
    conn: Connection, target: str, products: int, digests: dict[str, tuple[int, int]]
) -> Plan:
    """The plan from per-kind (count, digest sum) computed elsewhere: the snapshot sums
    the same 64-bit hashes of the same row texts while it renders them, so for the
    same rows this is exactly ``purge_plan``'s plan (PostgreSQL's numeric sum and
    Python's int print alike). Rows the rendering cannot reach (an image whose
    product is gone, in a database without Medusa's foreign keys) are in
    ``purge_plan``'s sums only: the apply's plan then differs, and it refuses."""
    parts: dict[str, list[int | str]] = {
        name: [n, str(digest) if n else "0"] for name, (n, digest) in digests.items()
    }
    counts = {"products": products, **{name: n for name, (n, _) in digests.items()}}
    return _plan(conn, target, counts, parts)


def _plan(conn: Connection, target: str, counts: dict[str, int], parts: dict[str, Any]) -> Plan:
    return Plan(
        kind="purge-product-media",
        target=target,
        counts=counts,
        plan_hash=plan_hash_of({"purge-product-media": parts}, database=str(fingerprint(conn))),
    )


def require_snapshot_holds(plan: Plan, summary: dict[str, object], uri: str) -> None:
    """Every row the purge deletes must be in the file: the plan counts whole tables,
    the documents only rows under a product (all of them, given Medusa's foreign
    keys; a database without them could hold an image whose product is gone)."""
    pairs = {
        "images": "totalImages",
        "variant_links": "totalVariantLinks",
        "product_thumbnails": "totalProductThumbnails",
        "variant_thumbnails": "totalVariantThumbnails",
    }
    short = {
        k: (plan.counts[k], summary.get(v))
        for k, v in pairs.items()
        if plan.counts[k] != summary.get(v)
    }
    if short:
        raise DriftDetected(
            f"Refused: the purge would delete rows snapshot {uri} does not "
            "hold ("
            + ", ".join(f"{k}: {n} live, {m} in the snapshot" for k, (n, m) in short.items())
            + "); nothing changed."
        )
