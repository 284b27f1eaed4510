"""Every SQL statement that reads or changes Medusa's product media.

Scope ("every image reference"): all ``image`` rows (soft-deleted too), all
``product_variant_product_image`` rows (each points at an image),
``product.thumbnail`` and ``product_variant.thumbnail`` of variants that belong
to a product. Copies in cart/order/inventory tables are history and out of scope.

Snapshots are loaded into ``ON COMMIT DROP`` temporary tables (``_snap_*``) so
comparison, purge and restore are set-based SQL whatever the catalog size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from sqlalchemy import Connection, text

from safeops.errors import SnapshotInvalid
from safeops.models import Plan, TableDiff, plan_hash_of
from safeops.snapshot_format import SnapshotReader, SnapshotWriter

MEDIA_FORMAT = "safeops/medusa-media-snapshot"
TOTAL_KEYS = ("totalProducts", "totalImages", "totalVariantLinks", "totalThumbnails",
              "totalProductThumbnails", "totalVariantThumbnails")

# One row per product that holds any reference, its document built by PostgreSQL
# (string_agg keeps each document on one line; json_agg would add newlines).
SNAPSHOT_SQL = text("""
WITH scope AS (
    SELECT p.id, p.handle, p.thumbnail FROM product p
    WHERE p.thumbnail IS NOT NULL
       OR EXISTS (SELECT 1 FROM image i WHERE i.product_id = p.id)
       OR EXISTS (SELECT 1 FROM product_variant v
                  WHERE v.product_id = p.id AND v.thumbnail IS NOT NULL)
), docs AS (
    SELECT s.id, s.thumbnail IS NOT NULL AS has_thumb,
        (SELECT count(*) FROM image i WHERE i.product_id = s.id) AS n_images,
        (SELECT count(*) FROM product_variant_product_image l
           JOIN image i ON i.id = l.image_id WHERE i.product_id = s.id) AS n_links,
        (SELECT count(*) FROM product_variant v
           WHERE v.product_id = s.id AND v.thumbnail IS NOT NULL) AS n_vthumbs,
        json_build_object(
            'id', s.id, 'handle', s.handle, 'thumbnail', s.thumbnail,
            'images', COALESCE((SELECT ('[' || string_agg(row_to_json(i)::text, ','
                                  ORDER BY i.id) || ']')::json
                                FROM image i WHERE i.product_id = s.id), '[]'::json),
            'variantLinks', COALESCE((SELECT ('[' || string_agg(row_to_json(l)::text, ','
                                  ORDER BY l.id) || ']')::json
                                FROM product_variant_product_image l
                                JOIN image i ON i.id = l.image_id
                                WHERE i.product_id = s.id), '[]'::json),
            'variantThumbnails', COALESCE((SELECT ('[' || string_agg(
                                  json_build_object('id', v.id, 'thumbnail', v.thumbnail)::text,
                                  ',' ORDER BY v.id) || ']')::json
                                FROM product_variant v
                                WHERE v.product_id = s.id AND v.thumbnail IS NOT NULL),
                                '[]'::json)
        )::text AS doc
    FROM scope s
)
SELECT doc, n_images, n_links, n_vthumbs, has_thumb FROM docs ORDER BY id
""")

COUNT_SCOPE_SQL = text("""
SELECT count(*) FROM product p
WHERE p.thumbnail IS NOT NULL
   OR EXISTS (SELECT 1 FROM image i WHERE i.product_id = p.id)
   OR EXISTS (SELECT 1 FROM product_variant v WHERE v.product_id = p.id AND v.thumbnail IS NOT NULL)
""")


def count_products_in_scope(conn: Connection) -> int:
    return int(conn.execute(COUNT_SCOPE_SQL).scalar_one())


def stream_snapshot(conn: Connection, writer: SnapshotWriter,
                    on_product: Callable[[int], None] | None = None) -> dict[str, int]:
    """Write every product document; returns the totals for the summary."""
    totals = dict.fromkeys(TOTAL_KEYS, 0)
    result = conn.execute(SNAPSHOT_SQL.execution_options(stream_results=True, yield_per=500))
    for doc, n_images, n_links, n_vthumbs, has_thumb in result:
        writer.add(doc)
        totals["totalProducts"] += 1
        totals["totalImages"] += n_images
        totals["totalVariantLinks"] += n_links
        totals["totalProductThumbnails"] += int(has_thumb)
        totals["totalVariantThumbnails"] += n_vthumbs
        if on_product is not None:
            on_product(totals["totalProducts"])
    totals["totalThumbnails"] = totals["totalProductThumbnails"] + totals["totalVariantThumbnails"]
    return totals


# ---------------------------------------------------------------- loading a snapshot

LOAD_SQL = [
    "CREATE TEMP TABLE _snap_product ON COMMIT DROP AS "
    "SELECT j->>'id' AS id, j->>'thumbnail' AS thumbnail, j->'images' AS images, "
    "       j->'variantLinks' AS links, j->'variantThumbnails' AS vthumbs "
    "FROM (SELECT doc::json AS j FROM _snap_doc) d",
    "CREATE TEMP TABLE _snap_image ON COMMIT DROP AS "
    "SELECT r.* FROM _snap_product p, json_array_elements(p.images) e, "
    "     json_populate_record(NULL::image, e) r",
    "CREATE TEMP TABLE _snap_image_owner ON COMMIT DROP AS "
    "SELECT p.id AS product_id, e->>'product_id' AS claimed FROM _snap_product p, "
    "     json_array_elements(p.images) e",
    "CREATE TEMP TABLE _snap_link ON COMMIT DROP AS "
    "SELECT r.* FROM _snap_product p, json_array_elements(p.links) e, "
    "     json_populate_record(NULL::product_variant_product_image, e) r",
    "CREATE TEMP TABLE _snap_product_thumb ON COMMIT DROP AS "
    "SELECT id, thumbnail FROM _snap_product WHERE thumbnail IS NOT NULL",
    "CREATE TEMP TABLE _snap_variant_thumb ON COMMIT DROP AS "
    "SELECT e->>'id' AS id, e->>'thumbnail' AS thumbnail, p.id AS product_id "
    "FROM _snap_product p, json_array_elements(p.vthumbs) e",
    "CREATE INDEX ON _snap_image (id)",
    "CREATE INDEX ON _snap_link (id)",
    "ANALYZE _snap_product",
    "ANALYZE _snap_image",
    "ANALYZE _snap_link",
    "ANALYZE _snap_product_thumb",
    "ANALYZE _snap_variant_thumb",
]

LOADED_TOTALS_SQL = text("""
SELECT
  (SELECT count(*) FROM _snap_product), (SELECT count(DISTINCT id) FROM _snap_product),
  (SELECT count(*) FROM _snap_image), (SELECT count(DISTINCT id) FROM _snap_image),
  (SELECT count(*) FROM _snap_link), (SELECT count(DISTINCT id) FROM _snap_link),
  (SELECT count(*) FROM _snap_product_thumb),
  (SELECT count(*) FROM _snap_variant_thumb), (SELECT count(DISTINCT id) FROM _snap_variant_thumb),
  (SELECT count(*) FROM _snap_image_owner WHERE claimed IS DISTINCT FROM product_id),
  (SELECT count(*) FROM _snap_link l WHERE NOT EXISTS
      (SELECT 1 FROM _snap_image i WHERE i.id = l.image_id))
""")


def load_snapshot(conn: Connection, reader: SnapshotReader) -> dict[str, int]:
    """Stream the body into temp tables and check it against its own summary.

    The body is copied as text and parsed only after the checksum held, so a
    tampered file is reported as a checksum failure, not as a JSON error."""
    conn.execute(text("CREATE TEMP TABLE _snap_doc (doc text NOT NULL) ON COMMIT DROP"))
    raw = conn.connection.driver_connection
    with raw.cursor() as cur, cur.copy("COPY _snap_doc (doc) FROM STDIN") as copy:  # type: ignore[union-attr]
        for doc in reader.documents():
            copy.write_row((doc.decode("utf-8", errors="replace"),))
    try:
        with conn.begin_nested():
            for statement in LOAD_SQL:
                conn.execute(text(statement))
    except Exception as exc:
        raise SnapshotInvalid(f"Snapshot {reader.uri} failed the format check: its documents "
                              f"do not fit the Medusa tables ({str(exc).splitlines()[0]})") from None
    (products, d_products, images, d_images, links, d_links, pthumbs, vthumbs, d_vthumbs,
     misowned, dangling) = conn.execute(LOADED_TOTALS_SQL).one()
    loaded = {"totalProducts": products, "totalImages": images, "totalVariantLinks": links,
              "totalProductThumbnails": pthumbs, "totalVariantThumbnails": vthumbs,
              "totalThumbnails": pthumbs + vthumbs}
    problems = []
    for key, value in loaded.items():
        if reader.summary.get(key) != value:
            problems.append(f"{key} is {reader.summary.get(key)!r} in the summary but the body "
                            f"holds {value}")
    if (products, images, links, vthumbs) != (d_products, d_images, d_links, d_vthumbs):
        problems.append("the body repeats ids")
    if misowned or dangling:
        problems.append(f"{misowned} image(s) under the wrong product, {dangling} link(s) to "
                        "images absent from the snapshot")
    if problems:
        raise SnapshotInvalid(f"Snapshot {reader.uri} failed the totals check: "
                              + "; ".join(problems))
    return loaded


# ---------------------------------------------------------------- live comparison

def _diff(conn: Connection, table: str, missing_sql: str, extra_sql: str,
          changed_sql: str | None) -> TableDiff:
    def count_first(sql: str) -> tuple[int, list[str]]:
        n, first = conn.execute(text(
            f"SELECT count(*), (array_agg(id ORDER BY id))[1:5] FROM ({sql}) q")).one()
        return int(n), list(first or [])

    missing, first_missing = count_first(missing_sql)
    extra, first_extra = count_first(extra_sql)
    changed, first_changed = count_first(changed_sql) if changed_sql else (0, [])
    return TableDiff(table=table, missing=missing, extra=extra, changed=changed,
                     first_missing=first_missing, first_extra=first_extra,
                     first_changed=first_changed)


def compare_with_live(conn: Connection) -> list[TableDiff]:
    """Loaded snapshot vs the database: ids and, for rows in both, full content."""
    return [
        _diff(conn, "image",
              "SELECT s.id FROM _snap_image s WHERE NOT EXISTS "
              "(SELECT 1 FROM image i WHERE i.id = s.id)",
              "SELECT i.id FROM image i WHERE NOT EXISTS "
              "(SELECT 1 FROM _snap_image s WHERE s.id = i.id)",
              "SELECT s.id FROM _snap_image s JOIN image i ON i.id = s.id "
              "WHERE ROW(s.*) IS DISTINCT FROM ROW(i.*)"),
        _diff(conn, "product_variant_product_image",
              "SELECT s.id FROM _snap_link s WHERE NOT EXISTS "
              "(SELECT 1 FROM product_variant_product_image l WHERE l.id = s.id)",
              "SELECT l.id FROM product_variant_product_image l WHERE NOT EXISTS "
              "(SELECT 1 FROM _snap_link s WHERE s.id = l.id)",
              "SELECT s.id FROM _snap_link s JOIN product_variant_product_image l ON l.id = s.id "
              "WHERE ROW(s.*) IS DISTINCT FROM ROW(l.*)"),
        _diff(conn, "product.thumbnail",
              "SELECT s.id FROM _snap_product_thumb s LEFT JOIN product p ON p.id = s.id "
              "WHERE p.thumbnail IS NULL",
              "SELECT p.id FROM product p WHERE p.thumbnail IS NOT NULL AND NOT EXISTS "
              "(SELECT 1 FROM _snap_product_thumb s WHERE s.id = p.id)",
              "SELECT s.id FROM _snap_product_thumb s JOIN product p ON p.id = s.id "
              "WHERE p.thumbnail IS NOT NULL AND p.thumbnail <> s.thumbnail"),
        _diff(conn, "product_variant.thumbnail",
              "SELECT s.id FROM _snap_variant_thumb s LEFT JOIN product_variant v ON v.id = s.id "
              "WHERE v.thumbnail IS NULL",
              "SELECT v.id FROM product_variant v WHERE v.thumbnail IS NOT NULL "
              "AND v.product_id IS NOT NULL AND NOT EXISTS "
              "(SELECT 1 FROM _snap_variant_thumb s WHERE s.id = v.id)",
              "SELECT s.id FROM _snap_variant_thumb s JOIN product_variant v ON v.id = s.id "
              "WHERE v.thumbnail IS NOT NULL AND v.thumbnail <> s.thumbnail"),
    ]


# ---------------------------------------------------------------- plan

PURGE_PLAN_SQL = text("""
SELECT 'images', count(*), md5(COALESCE(string_agg(id, ',' ORDER BY id), '')) FROM image
UNION ALL
SELECT 'variant_links', count(*), md5(COALESCE(string_agg(id, ',' ORDER BY id), ''))
  FROM product_variant_product_image
UNION ALL
SELECT 'product_thumbnails', count(*), md5(COALESCE(string_agg(id, ',' ORDER BY id), ''))
  FROM product WHERE thumbnail IS NOT NULL
UNION ALL
SELECT 'variant_thumbnails', count(*), md5(COALESCE(string_agg(id, ',' ORDER BY id), ''))
  FROM product_variant WHERE thumbnail IS NOT NULL AND product_id IS NOT NULL
""")


def purge_plan(conn: Connection, target: str) -> Plan:
    """The live state the purge removes; the hash binds an approval to it."""
    rows = conn.execute(PURGE_PLAN_SQL).all()
    counts = {name: int(n) for name, n, _ in rows}
    parts = {name: [int(n), digest] for name, n, digest in rows}
    products = count_products_in_scope(conn)
    counts = {"products": products, **counts}
    return Plan(kind="purge-product-media", target=target, counts=counts,
                plan_hash=plan_hash_of({"purge-product-media": parts}))


# ---------------------------------------------------------------- apply

LOCK_SQL = text("LOCK TABLE product, product_variant, image, product_variant_product_image "
                "IN SHARE ROW EXCLUSIVE MODE")


def lock_media_tables(conn: Connection) -> None:
    """SHARE ROW EXCLUSIVE: readers (the storefront) carry on; every writer,
    Medusa's and a second safeops run alike, waits until we commit. The mode
    conflicts with itself, so two purges/restores serialise; lock_timeout turns
    a long wait behind someone else's transaction into a retryable error."""
    conn.execute(LOCK_SQL)


def delete_snapshot_rows(conn: Connection) -> dict[str, int]:
    """Exactly the snapshot's rows; callers have proven snapshot == live first."""
    links = conn.execute(text("DELETE FROM product_variant_product_image l USING _snap_link s "
                              "WHERE l.id = s.id")).rowcount
    images = conn.execute(text("DELETE FROM image i USING _snap_image s WHERE i.id = s.id")
                          ).rowcount
    pthumbs = conn.execute(text(
        "UPDATE product p SET thumbnail = NULL, updated_at = now() FROM _snap_product_thumb s "
        "WHERE p.id = s.id AND p.thumbnail = s.thumbnail")).rowcount
    vthumbs = conn.execute(text(
        "UPDATE product_variant v SET thumbnail = NULL, updated_at = now() "
        "FROM _snap_variant_thumb s WHERE v.id = s.id AND v.thumbnail = s.thumbnail")).rowcount
    return {"images": images, "variant_links": links, "product_thumbnails": pthumbs,
            "variant_thumbnails": vthumbs}


RESTORE_PLAN_SQL = text("""
SELECT
  (SELECT count(*) FROM _snap_image s WHERE NOT EXISTS (SELECT 1 FROM image i WHERE i.id = s.id)
      AND EXISTS (SELECT 1 FROM product p WHERE p.id = s.product_id)),
  (SELECT count(*) FROM _snap_image s WHERE EXISTS (SELECT 1 FROM image i WHERE i.id = s.id)),
  (SELECT count(*) FROM _snap_image s WHERE NOT EXISTS (SELECT 1 FROM image i WHERE i.id = s.id)
      AND NOT EXISTS (SELECT 1 FROM product p WHERE p.id = s.product_id)),
  (SELECT count(*) FROM _snap_link s
     WHERE NOT EXISTS (SELECT 1 FROM product_variant_product_image l WHERE l.id = s.id)
       AND (EXISTS (SELECT 1 FROM image i WHERE i.id = s.image_id)
            OR EXISTS (SELECT 1 FROM _snap_image si JOIN product p ON p.id = si.product_id
                       WHERE si.id = s.image_id))),
  (SELECT count(*) FROM _snap_link s
     WHERE EXISTS (SELECT 1 FROM product_variant_product_image l WHERE l.id = s.id)),
  (SELECT count(*) FROM _snap_product_thumb s JOIN product p ON p.id = s.id
     WHERE p.thumbnail IS NULL),
  (SELECT count(*) FROM _snap_product_thumb s JOIN product p ON p.id = s.id
     WHERE p.thumbnail IS NOT NULL),
  (SELECT count(*) FROM _snap_variant_thumb s JOIN product_variant v ON v.id = s.id
     WHERE v.thumbnail IS NULL),
  (SELECT count(*) FROM _snap_variant_thumb s JOIN product_variant v ON v.id = s.id
     WHERE v.thumbnail IS NOT NULL),
  (SELECT count(*) FROM _snap_product_thumb s WHERE NOT EXISTS
     (SELECT 1 FROM product p WHERE p.id = s.id))
  + (SELECT count(*) FROM _snap_variant_thumb s WHERE NOT EXISTS
     (SELECT 1 FROM product_variant v WHERE v.id = s.id))
""")


def restore_plan(conn: Connection, target: str, body_sha256: str) -> Plan:
    (img_new, img_present, img_orphan, link_new, link_present, pt_set, pt_kept, vt_set, vt_kept,
     thumb_orphan) = (int(v) for v in conn.execute(RESTORE_PLAN_SQL).one())
    counts = {"images": img_new, "variant_links": link_new, "product_thumbnails": pt_set,
              "variant_thumbnails": vt_set}
    skipped = {"images_already_present": img_present, "images_product_gone": img_orphan,
               "variant_links_already_present": link_present,
               "product_thumbnails_kept": pt_kept, "variant_thumbnails_kept": vt_kept,
               "thumbnails_owner_gone": thumb_orphan}
    notes = [f"{v} {k.replace('_', ' ')}" for k, v in skipped.items() if v]
    return Plan(kind="restore-product-media", target=target, counts={**counts, **skipped},
                plan_hash=plan_hash_of({"restore-product-media": {**counts, **skipped},
                                        "snapshot": body_sha256}),
                notes=notes)


def insert_snapshot_rows(conn: Connection) -> dict[str, int]:
    """Same ids, urls, ranks, metadata and timestamps; never clobbers a newer thumbnail."""
    images = conn.execute(text(
        "INSERT INTO image SELECT s.* FROM _snap_image s "
        "WHERE NOT EXISTS (SELECT 1 FROM image i WHERE i.id = s.id) "
        "AND EXISTS (SELECT 1 FROM product p WHERE p.id = s.product_id)")).rowcount
    links = conn.execute(text(
        "INSERT INTO product_variant_product_image SELECT s.* FROM _snap_link s "
        "WHERE NOT EXISTS (SELECT 1 FROM product_variant_product_image l WHERE l.id = s.id) "
        "AND EXISTS (SELECT 1 FROM image i WHERE i.id = s.image_id)")).rowcount
    pthumbs = conn.execute(text(
        "UPDATE product p SET thumbnail = s.thumbnail, updated_at = now() "
        "FROM _snap_product_thumb s WHERE p.id = s.id AND p.thumbnail IS NULL")).rowcount
    vthumbs = conn.execute(text(
        "UPDATE product_variant v SET thumbnail = s.thumbnail, updated_at = now() "
        "FROM _snap_variant_thumb s WHERE v.id = s.id AND v.thumbnail IS NULL")).rowcount
    return {"images": images, "variant_links": links, "product_thumbnails": pthumbs,
            "variant_thumbnails": vthumbs}


def snapshot_image_urls(conn: Connection) -> Iterator[tuple[str, str]]:
    """(image id, url) of the loaded snapshot, streamed, for object checks."""
    result = conn.execute(text("SELECT id, url FROM _snap_image ORDER BY id")
                          .execution_options(stream_results=True, yield_per=2000))
    for image_id, url in result:
        yield image_id, url
