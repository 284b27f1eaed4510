"""The restore's plan: what a snapshot would put back into the catalog as it is now.

Read by both transactions of a restore (the short read-only one that shows the
plan, and the apply's, under its lock, which re-derives it from the same file
and must find the approved hash) and by the apply's check afterwards
(``left_to_restore``), so the three can never count differently. Everything
here reads the snapshot loaded into temp tables (``loaded.load_snapshot``).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Connection, text

from safeops.core.db import fingerprint
from safeops.core.models import Plan, plan_hash_of

# What Medusa did since the snapshot, per snapshot product, classified once per
# transaction into two small temp tables that the plan's counts and the apply's
# statements both read (the apply re-plans under its lock, so it inserts by the
# very classification it counted):
#
# _restore_since: snapshot products soft-deleted since the snapshot. Deleting a
#   product in Medusa soft-deletes its images with it, so its restored images
#   come back soft-deleted with the product's deleted_at (one already
#   soft-deleted in the snapshot keeps its own) and no thumbnail is set on it or
#   on its variants. The snapshot does not record a product's deleted_at, only
#   when it was taken (``createdAt``), so a product soft-deleted now counts as
#   soft-deleted since unless its deleted_at predates createdAt by more than
#   SINCE_MARGIN: that is the snapshot saying it was already deleted, and such a
#   product is restored exactly as the snapshot holds it (the purge+restore
#   identity). The margin absorbs clock skew between the host that wrote the
#   snapshot and whatever stamped deleted_at; in doubt a product counts as
#   deleted since, the side that never puts live images under a deleted
#   product. A snapshot without createdAt counts every soft-deleted product as
#   deleted since. Its variant links are restored as the snapshot holds them:
#   Medusa keeps the rows linked to soft-deleted ones, they are invisible while
#   the image and variant are deleted, and a product restored in Medusa later
#   gets its variant images back with them (skipping them would lose them).
# _restore_newer: products holding live images the snapshot lacks (added since),
#   with their highest live rank now: the images restored under such a product
#   go after it, in their snapshot order (rank, id), and the newer ones keep
#   their ranks. Only the ranks of the rows inserted change, so a second run
#   still finds every restored row present by id and restores nothing.
SINCE_MARGIN = timedelta(minutes=5)
CLASSIFY_SQL = [
    "DROP TABLE IF EXISTS _restore_since, _restore_newer",
    "CREATE TEMP TABLE _restore_since ON COMMIT DROP AS "
    "SELECT p.id, p.deleted_at FROM product p "
    "WHERE p.deleted_at > COALESCE(CAST(:deleted_after AS timestamptz), '-infinity') "
    # The snapshot's own evidence, whatever the clocks say: a product whose snapshot
    # images are all soft-deleted was deleted when the snapshot was taken (Medusa
    # soft-deletes a product's images with it), so it is restored as the file holds it.
    "  AND NOT (EXISTS (SELECT 1 FROM _snap_image s WHERE s.product_id = p.id) "
    "           AND NOT EXISTS (SELECT 1 FROM _snap_image s "
    "                           WHERE s.product_id = p.id AND s.deleted_at IS NULL)) "
    "  AND (EXISTS (SELECT 1 FROM _snap_image s WHERE s.product_id = p.id) "
    "       OR EXISTS (SELECT 1 FROM _snap_product_thumb s WHERE s.id = p.id) "
    "       OR EXISTS (SELECT 1 FROM _snap_variant_thumb s WHERE s.product_id = p.id))",
    "CREATE TEMP TABLE _restore_newer ON COMMIT DROP AS "
    "SELECT g.product_id, (SELECT max(i.rank) FROM image i "
    "                      WHERE i.product_id = g.product_id AND i.deleted_at IS NULL) AS top_rank "
    "FROM (SELECT DISTINCT i.product_id FROM image i WHERE i.deleted_at IS NULL "
    "      AND NOT EXISTS (SELECT 1 FROM _snap_image s WHERE s.id = i.id)) g",
    # Statistics of these two small tables (milliseconds): without them the planner
    # guesses ~1,200 rows each and merge-joins them, sorting every snapshot image first.
    "ANALYZE _restore_since, _restore_newer",
]

# One pass per loaded table: each snapshot row meets the live row with its id
# (and, for an image, its product; for a link, its image live or restored) by
# LEFT JOINs on primary keys, which never repeat a row, and FILTERs sort it into
# new / present / owner gone, and a new one by what its product did since (the
# classification tables hold a product at most once). _snap_image ids are
# distinct (load_snapshot refuses a body that repeats ids), so the links' join
# to it repeats nothing either.
RESTORE_PLAN_SQL = text("""
WITH images AS (
  SELECT count(*) FILTER (WHERE i.id IS NULL AND p.id IS NOT NULL) AS new,
         count(i.id) AS present,
         count(*) FILTER (WHERE i.id IS NULL AND p.id IS NULL) AS owner_gone,
         count(*) FILTER (WHERE i.id IS NULL AND sd.id IS NOT NULL) AS soft_deleted,
         count(*) FILTER (WHERE i.id IS NULL AND n.product_id IS NOT NULL) AS after_newer,
         count(DISTINCT s.product_id) FILTER (WHERE i.id IS NULL AND n.product_id IS NOT NULL)
           AS newer_products
  FROM _snap_image s
  LEFT JOIN image i ON i.id = s.id
  LEFT JOIN product p ON p.id = s.product_id
  LEFT JOIN _restore_since sd ON sd.id = s.product_id
  LEFT JOIN _restore_newer n ON n.product_id = s.product_id
), links AS (
  SELECT count(*) FILTER (WHERE l.id IS NULL AND (i.id IS NOT NULL OR sp.id IS NOT NULL)) AS new,
         count(l.id) AS present
  FROM _snap_link s
  LEFT JOIN product_variant_product_image l ON l.id = s.id
  LEFT JOIN image i ON i.id = s.image_id
  LEFT JOIN _snap_image si ON si.id = s.image_id
  LEFT JOIN product sp ON sp.id = si.product_id
), pthumbs AS (
  SELECT count(*) FILTER (WHERE p.id IS NOT NULL AND p.thumbnail IS NULL AND sd.id IS NULL) AS set,
         count(p.thumbnail) AS kept, count(*) FILTER (WHERE p.id IS NULL) AS owner_gone,
         count(*) FILTER (WHERE p.thumbnail IS NULL AND sd.id IS NOT NULL) AS soft_deleted
  FROM _snap_product_thumb s LEFT JOIN product p ON p.id = s.id
  LEFT JOIN _restore_since sd ON sd.id = s.id
), vthumbs AS (
  SELECT count(*) FILTER (WHERE v.id IS NOT NULL AND v.thumbnail IS NULL AND sd.id IS NULL) AS set,
         count(v.thumbnail) AS kept, count(*) FILTER (WHERE v.id IS NULL) AS owner_gone,
         count(*) FILTER (WHERE v.id IS NOT NULL AND v.thumbnail IS NULL AND sd.id IS NOT NULL)
           AS soft_deleted
  FROM _snap_variant_thumb s LEFT JOIN product_variant v ON v.id = s.id
  LEFT JOIN _restore_since sd ON sd.id = s.product_id
)
SELECT images.new, images.present, images.owner_gone, links.new, links.present,
       pthumbs.set, pthumbs.kept, vthumbs.set, vthumbs.kept,
       pthumbs.owner_gone + vthumbs.owner_gone,
       images.soft_deleted, (SELECT count(*) FROM _restore_since),
       pthumbs.soft_deleted + vthumbs.soft_deleted,
       images.after_newer, images.newer_products
FROM images, links, pthumbs, vthumbs
""")


def deleted_after(snapshot_created_at: object) -> datetime | None:
    """The soft-delete time after which a product counts as deleted since the
    snapshot (see _restore_since); None when the snapshot does not say when it
    was taken."""
    if not isinstance(snapshot_created_at, str):
        return None
    try:
        created = datetime.fromisoformat(snapshot_created_at)
    except ValueError:
        return None
    return created - SINCE_MARGIN if created.tzinfo is not None else None


def restore_plan(
    conn: Connection, target: str, body_sha256: str, *, snapshot_created_at: object
) -> Plan:
    """Counts of what a restore inserts and skips, every snapshot image sorted by
    its product now: present, gone (no row), soft-deleted since the snapshot, or
    gained other images since (``snapshot_created_at``: the summary's createdAt)."""
    for statement in CLASSIFY_SQL:
        conn.execute(text(statement), {"deleted_after": deleted_after(snapshot_created_at)})
    (
        img_new,
        img_present,
        img_orphan,
        link_new,
        link_present,
        pt_set,
        pt_kept,
        vt_set,
        vt_kept,
        thumb_orphan,
        img_soft,
        prod_soft,
        thumb_soft,
        img_after_newer,
        prod_newer,
    ) = (int(v) for v in conn.execute(RESTORE_PLAN_SQL).one())
    counts = {
        "images": img_new,
        "variant_links": link_new,
        "product_thumbnails": pt_set,
        "variant_thumbnails": vt_set,
        # how the images counted above come back (subsets of "images")
        "images_product_soft_deleted": img_soft,
        "products_soft_deleted": prod_soft,
        "images_after_newer_images": img_after_newer,
        "products_with_newer_images": prod_newer,
    }
    skipped = {
        "images_already_present": img_present,
        "images_product_gone": img_orphan,
        "variant_links_already_present": link_present,
        "product_thumbnails_kept": pt_kept,
        "variant_thumbnails_kept": vt_kept,
        "thumbnails_owner_gone": thumb_orphan,
        "thumbnails_product_soft_deleted": thumb_soft,
    }
    notes = [f"{v} {k.replace('_', ' ')}" for k, v in skipped.items() if v]
    return Plan(
        kind="restore-product-media",
        target=target,
        counts={**counts, **skipped},
        plan_hash=plan_hash_of(
            {"restore-product-media": {**counts, **skipped}, "snapshot": body_sha256},
            database=str(fingerprint(conn)),
        ),
        notes=notes,
    )


# What is still absent after an apply inserted the plan: the plan's own "to do" counts
# (RESTORE_PLAN_SQL's new/set columns, same definitions) over the same loaded rows and
# classification, counted in the apply's transaction after its writes. Under the apply's
# lock nothing else writes these tables, so this is what its commit makes durable: the
# check afterwards, without loading the file again after the commit. Written as
# anti-joins that find nothing after a complete apply, so the conditions after them
# (an owner that exists now) are evaluated for no row; cheaper than the whole plan.
LEFT_SQL = text("""
SELECT
  (SELECT count(*) FROM _snap_image s
   WHERE NOT EXISTS (SELECT 1 FROM image i WHERE i.id = s.id)
     AND EXISTS (SELECT 1 FROM product p WHERE p.id = s.product_id)),
  (SELECT count(*) FROM _snap_link s
   WHERE NOT EXISTS (SELECT 1 FROM product_variant_product_image l WHERE l.id = s.id)
     AND (EXISTS (SELECT 1 FROM image i WHERE i.id = s.image_id)
          OR EXISTS (SELECT 1 FROM _snap_image si JOIN product sp ON sp.id = si.product_id
                     WHERE si.id = s.image_id))),
  (SELECT count(*) FROM _snap_product_thumb s JOIN product p ON p.id = s.id
   WHERE p.thumbnail IS NULL AND NOT EXISTS (SELECT 1 FROM _restore_since sd WHERE sd.id = s.id)),
  (SELECT count(*) FROM _snap_variant_thumb s JOIN product_variant v ON v.id = s.id
   WHERE v.thumbnail IS NULL
     AND NOT EXISTS (SELECT 1 FROM _restore_since sd WHERE sd.id = s.product_id))
""")
TODO = ("images", "variant_links", "product_thumbnails", "variant_thumbnails")


def left_to_restore(conn: Connection) -> dict[str, int]:
    """The rows of the loaded snapshot that a restore should have put back and did not:
    all zero after a complete apply (the check afterwards, counted before the commit)."""
    return dict(zip(TODO, (int(v) for v in conn.execute(LEFT_SQL).one()), strict=True))


# Where the restored rows will point: the approver judges the URLs' hosts (an edited
# snapshot pointing images at another host shows up here), not just the counts.
IMAGE_HOSTS_SQL = text("""
SELECT COALESCE(substring(s.url FROM '^[A-Za-z][A-Za-z0-9+.-]*://([^/?#]+)'), '(no host)') AS host,
       count(*)
FROM _snap_image s LEFT JOIN image i ON i.id = s.id
WHERE i.id IS NULL
GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT :shown""")
HOSTS_SHOWN = 8


def image_hosts(conn: Connection) -> list[str]:
    rows = conn.execute(IMAGE_HOSTS_SQL, {"shown": HOSTS_SHOWN + 1}).all()
    if not rows:
        return []
    shown = ", ".join(f"{host} ({n})" for host, n in rows[:HOSTS_SHOWN])
    more = " and other hosts" if len(rows) > HOSTS_SHOWN else ""
    return [f"restored images point at: {shown}{more}"]
