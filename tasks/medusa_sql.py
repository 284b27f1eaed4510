"""Every SQL statement that reads or changes Medusa's product media.

Scope ("every image reference"): all ``image`` rows (soft-deleted too), all
``product_variant_product_image`` rows (each points at an image),
``product.thumbnail`` and ``product_variant.thumbnail`` of variants that belong
to a product. Copies in cart/order/inventory tables are history and out of scope.

Snapshots are loaded into ``ON COMMIT DROP`` temporary tables (``_snap_*``) so
comparison, purge and restore are set-based SQL whatever the catalog size.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator

from sqlalchemy import Connection, text

from safeops.errors import SnapshotInvalid
from safeops.models import Plan, TableDiff, plan_hash_of
from safeops.snapshot_format import SnapshotReader, SnapshotWriter

MEDIA_FORMAT = "safeops/medusa-media-snapshot"

# One document per product that holds any reference, built by PostgreSQL.
# Set-based: each kind of row is rendered once, sorted by (product, id) in one
# pass and concatenated per product (merge joins on product id, no per-product
# subqueries); the document is assembled as text in exactly the layout
# json_build_object writes (``{"key" : value, ...}``), so no JSON is parsed
# again on the way out. string_agg keeps each document on one line.
#
# The aggregates take their rows from sorted subqueries instead of carrying
# their own ORDER BY: PostgreSQL 15 sorts each group separately for an ordered
# aggregate (a tuplesort per product: ~1 s of 4.8 s at 1M images), while a
# sorted subquery feeding a grouped aggregate is one sort, which parallel
# workers can share. The order only matters for byte-equal re-renderings
# (match_live); were it ever to differ, match_live reports "no match" and its
# callers fall back to the order-free, row-by-row comparison, so it can cost
# time but never correctness.
SNAPSHOT_SQL = text("""
WITH images AS (
    SELECT r.product_id, string_agg(r.doc, ',') AS docs
    FROM (SELECT i.product_id, row_to_json(i)::text AS doc FROM image i
          ORDER BY i.product_id, i.id) r
    GROUP BY r.product_id
), links AS (
    SELECT r.product_id, string_agg(r.doc, ',') AS docs
    FROM (SELECT i.product_id, row_to_json(l)::text AS doc
          FROM product_variant_product_image l JOIN image i ON i.id = l.image_id
          ORDER BY i.product_id, l.id) r
    GROUP BY r.product_id
), vthumbs AS (
    SELECT r.product_id, string_agg(r.doc, ',') AS docs
    FROM (SELECT v.product_id, json_build_object('id', v.id, 'thumbnail', v.thumbnail)::text AS doc
          FROM product_variant v WHERE v.thumbnail IS NOT NULL AND v.product_id IS NOT NULL
          ORDER BY v.product_id, v.id) r
    GROUP BY r.product_id
)
SELECT '{"id" : ' || to_json(p.id)::text || ', "handle" : ' || to_json(p.handle)::text
       || ', "thumbnail" : ' || COALESCE(to_json(p.thumbnail)::text, 'null')
       || ', "images" : [' || COALESCE(im.docs, '') || '], "variantLinks" : ['
       || COALESCE(li.docs, '') || '], "variantThumbnails" : [' || COALESCE(vt.docs, '')
       || ']}' AS doc
FROM product p
LEFT JOIN images im ON im.product_id = p.id
LEFT JOIN links li ON li.product_id = p.id
LEFT JOIN vthumbs vt ON vt.product_id = p.id
WHERE p.thumbnail IS NOT NULL OR im.docs IS NOT NULL OR vt.docs IS NOT NULL
ORDER BY p.id
""")

# Bulk statements over the whole catalog: JIT compilation costs seconds per
# statement here and buys nothing for row_to_json/string_agg work; the sorts
# stay in memory instead of spilling at catalog scale; and the planner's default
# price for passing rows up from parallel workers keeps it from ever sharing the
# rendering and digests (3.3 s instead of 4.8 s for the 1M-image snapshot query
# on two cores). Parallel workers stay bounded by max_parallel_workers_per_gather.
BULK_SETTINGS = ("SET LOCAL jit = off", "SET LOCAL work_mem = '64MB'",
                 "SET LOCAL parallel_tuple_cost = 0.001", "SET LOCAL parallel_setup_cost = 10")


def tune_for_bulk(conn: Connection) -> None:
    """Transaction-local settings for catalog-sized statements."""
    for statement in BULK_SETTINGS:
        conn.execute(text(statement))


COUNT_SCOPE_SQL = text("""
SELECT count(*) FROM product p
WHERE p.thumbnail IS NOT NULL
   OR EXISTS (SELECT 1 FROM image i WHERE i.product_id = p.id)
   OR EXISTS (SELECT 1 FROM product_variant v WHERE v.product_id = p.id AND v.thumbnail IS NOT NULL)
""")


def count_products_in_scope(conn: Connection) -> int:
    tune_for_bulk(conn)
    return int(conn.execute(COUNT_SCOPE_SQL).scalar_one())


def count_products(conn: Connection) -> int:
    """Every product, an upper bound of those in scope: an index-only count, where
    the exact one probes every product's images (a progress bar needs no more)."""
    return int(conn.execute(text("SELECT count(*) FROM product")).scalar_one())


# What a snapshot's summary records and what its body must hold. Counted in the
# snapshot's own view independently of the rendering, so a row the rendering
# missed (an image whose product is gone, possible only without the foreign
# keys) makes the totals check fail instead of going unsnapshotted.
TOTALS_SQL = text("""
SELECT (SELECT count(*) FROM image),
       (SELECT count(*) FROM product_variant_product_image),
       (SELECT count(*) FROM product WHERE thumbnail IS NOT NULL),
       (SELECT count(*) FROM product_variant WHERE thumbnail IS NOT NULL
                                              AND product_id IS NOT NULL)
""")


def live_totals(conn: Connection, products: int) -> dict[str, int]:
    """Summary totals, in the order the summary lists them."""
    images, links, pthumbs, vthumbs = (int(v) for v in conn.execute(TOTALS_SQL).one())
    return {"totalProducts": products, "totalImages": images, "totalVariantLinks": links,
            "totalThumbnails": pthumbs + vthumbs, "totalProductThumbnails": pthumbs,
            "totalVariantThumbnails": vthumbs}


def live_documents(conn: Connection) -> Generator[bytes, None, None]:
    """Each product's document, in id order.

    Streamed with ``COPY (SNAPSHOT_SQL) TO STDOUT`` in binary format: PostgreSQL
    keeps rendering while Python hashes and writes (a cursor's FETCHes would
    leave one side idle at a time), and the documents arrive as raw UTF-8 bytes
    with nothing to unescape or decode. Callers consume every row: leaving a
    COPY early means cancelling it (``close()`` the generator, as every caller
    does in a ``finally``), which aborts the transaction: only for errors."""
    tune_for_bulk(conn)
    raw = conn.connection.driver_connection
    with raw.cursor() as cur, cur.copy(  # type: ignore[union-attr]
            f"COPY ({SNAPSHOT_SQL.text}) TO STDOUT (FORMAT BINARY)") as copy:
        copy.set_types(["bytea"])
        for (doc,) in copy.rows():
            yield doc


def stream_snapshot(conn: Connection, writer: SnapshotWriter,
                    on_product: Callable[[int], None] | None = None) -> dict[str, int]:
    """Write every product document; returns the totals for the summary."""
    tune_for_bulk(conn)
    live = live_documents(conn)
    written = 0
    try:
        for doc in live:
            writer.add(doc)
            written += 1
            if on_product is not None and not written % 1000:
                on_product(written)
    finally:
        live.close()  # an unfinished COPY holds the connection: end it before anything else
    return live_totals(conn, written)


def match_live(conn: Connection, reader: SnapshotReader) -> dict[str, int] | None:
    """Stream the snapshot's documents against a fresh rendering of the live catalog.

    The rendering is the snapshot query itself, in the caller's transaction, so
    a document equals its live counterpart byte for byte exactly when every
    column of every image and link row and every thumbnail of that product is
    unchanged, and equal streams mean equal id sets. Returns the live totals
    when every document matches and the totals agree with the summary; None
    otherwise (the caller then loads the snapshot to name the differences).
    The whole body is always read, so a tampered file still fails its checksum
    (SnapshotInvalid) before anything is compared. Memory stays flat: one
    document of each side at a time."""
    live = live_documents(conn)
    equal = True
    products = 0
    try:
        for doc in reader.documents():  # raises SnapshotInvalid at the end if tampered
            row = next(live, None)
            if row is None or row != doc:
                equal = False
                continue  # keep reading the file to its end (checksum)
            products += 1
        for _ in live:
            equal = False  # the live catalog has products the snapshot lacks
    finally:
        live.close()  # an unfinished COPY holds the connection: end it before anything else
    totals = live_totals(conn, products)
    if not equal or any(reader.summary.get(k) != v for k, v in totals.items()):
        return None
    return totals


def clean_diffs() -> list[TableDiff]:
    """What compare_with_live reports when snapshot and live are equal."""
    return [TableDiff(table=t) for t in ("image", "product_variant_product_image",
                                         "product.thumbnail", "product_variant.thumbnail")]


# ---------------------------------------------------------------- loading a snapshot

# Each document is parsed once, into jsonb (the OFFSET 0 keeps PostgreSQL from
# inlining the cast into each of the five extractions, which would parse every
# document five times); the element tables then read the binary jsonb.
LOAD_SQL = [
    "CREATE TEMP TABLE _snap_product ON COMMIT DROP AS "
    "SELECT j->>'id' AS id, j->>'thumbnail' AS thumbnail, j->'images' AS images, "
    "       j->'variantLinks' AS links, j->'variantThumbnails' AS vthumbs "
    "FROM (SELECT doc::jsonb AS j FROM _snap_doc OFFSET 0) d",
    "CREATE TEMP TABLE _snap_image ON COMMIT DROP AS "
    "SELECT r.* FROM _snap_product p, jsonb_array_elements(p.images) e, "
    "     jsonb_populate_record(NULL::image, e) r",
    "CREATE TEMP TABLE _snap_image_owner ON COMMIT DROP AS "
    "SELECT p.id AS product_id, e->>'product_id' AS claimed FROM _snap_product p, "
    "     jsonb_array_elements(p.images) e",
    "CREATE TEMP TABLE _snap_link ON COMMIT DROP AS "
    "SELECT r.* FROM _snap_product p, jsonb_array_elements(p.links) e, "
    "     jsonb_populate_record(NULL::product_variant_product_image, e) r",
    "CREATE TEMP TABLE _snap_product_thumb ON COMMIT DROP AS "
    "SELECT id, thumbnail FROM _snap_product WHERE thumbnail IS NOT NULL",
    "CREATE TEMP TABLE _snap_variant_thumb ON COMMIT DROP AS "
    "SELECT e->>'id' AS id, e->>'thumbnail' AS thumbnail, p.id AS product_id "
    "FROM _snap_product p, jsonb_array_elements(p.vthumbs) e",
    "CREATE INDEX ON _snap_image (id)",
    "CREATE INDEX ON _snap_link (id)",
    # Statistics only for the columns that joins use: the jsonb and url columns
    # would cost more to analyze than they could ever save.
    "ANALYZE _snap_product (id)",
    "ANALYZE _snap_image (id, product_id)",
    "ANALYZE _snap_link (id, image_id)",
    "ANALYZE _snap_product_thumb (id)",
    "ANALYZE _snap_variant_thumb (id)",
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
    tune_for_bulk(conn)
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
                              f"do not fit the Medusa tables ({str(exc).splitlines()[0]})"
                              ) from None
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


def delete_matched_rows(conn: Connection) -> dict[str, int]:
    """The snapshot's rows, once match_live proved (under the lock) that the live
    scope is exactly the snapshot: every image (each belongs to a product), every
    link (each points at an image), every product thumbnail, every thumbnail of a
    variant that belongs to a product. Plain set-based statements, as the SQL
    fallback runs them, with no join against a loaded copy."""
    links = conn.execute(text("DELETE FROM product_variant_product_image")).rowcount
    images = conn.execute(text("DELETE FROM image")).rowcount
    pthumbs = conn.execute(text(
        "UPDATE product SET thumbnail = NULL, updated_at = now() "
        "WHERE thumbnail IS NOT NULL")).rowcount
    vthumbs = conn.execute(text(
        "UPDATE product_variant SET thumbnail = NULL, updated_at = now() "
        "WHERE thumbnail IS NOT NULL AND product_id IS NOT NULL")).rowcount
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
    # Which rows to insert is decided before inserting any: an INSERT whose own
    # NOT EXISTS reads the table it grows gets planned for the (empty, after a
    # purge) table as a nested loop over a sequential scan, and every inserted
    # row then lengthens the scan of the next: quadratic, hours at 1M images.
    conn.execute(text(
        "CREATE TEMP TABLE _todo_image ON COMMIT DROP AS SELECT s.* FROM _snap_image s "
        "WHERE NOT EXISTS (SELECT 1 FROM image i WHERE i.id = s.id) "
        "AND EXISTS (SELECT 1 FROM product p WHERE p.id = s.product_id)"))
    images = conn.execute(text("INSERT INTO image SELECT * FROM _todo_image")).rowcount
    conn.execute(text(
        "CREATE TEMP TABLE _todo_link ON COMMIT DROP AS SELECT s.* FROM _snap_link s "
        "WHERE NOT EXISTS (SELECT 1 FROM product_variant_product_image l WHERE l.id = s.id) "
        "AND EXISTS (SELECT 1 FROM image i WHERE i.id = s.image_id)"))
    links = conn.execute(text(
        "INSERT INTO product_variant_product_image SELECT * FROM _todo_link")).rowcount
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
    yield from ((image_id, url) for image_id, url in result)
