"""Every SQL statement that reads or changes Medusa's product media.

Scope ("every image reference"): all ``image`` rows (soft-deleted too), all
``product_variant_product_image`` rows (each points at an image),
``product.thumbnail`` and ``product_variant.thumbnail`` of variants that belong
to a product. Copies in cart/order/inventory tables are history and out of scope.

Snapshots are loaded into ``ON COMMIT DROP`` temporary tables (``_snap_*``) so
comparison, purge and restore are set-based SQL whatever the catalog size.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Generator, Iterator

import psycopg
from sqlalchemy import Connection, text

from safeops.errors import DriftDetected, SnapshotInvalid
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
    SELECT r.product_id, count(*) AS n, string_agg(r.doc, ',') AS docs
    FROM (SELECT i.product_id, row_to_json(i)::text AS doc FROM image i
          ORDER BY i.product_id, i.id) r
    GROUP BY r.product_id
), links AS (
    SELECT r.product_id, count(*) AS n, string_agg(r.doc, ',') AS docs
    FROM (SELECT i.product_id, row_to_json(l)::text AS doc
          FROM product_variant_product_image l JOIN image i ON i.id = l.image_id
          ORDER BY i.product_id, l.id) r
    GROUP BY r.product_id
), vthumbs AS (
    SELECT r.product_id, count(*) AS n, string_agg(r.doc, ',') AS docs
    FROM (SELECT v.product_id, json_build_object('id', v.id, 'thumbnail', v.thumbnail)::text AS doc
          FROM product_variant v WHERE v.thumbnail IS NOT NULL AND v.product_id IS NOT NULL
          ORDER BY v.product_id, v.id) r
    GROUP BY r.product_id
)
SELECT '{"id" : ' || to_json(p.id)::text || ', "handle" : ' || to_json(p.handle)::text
       || ', "thumbnail" : ' || COALESCE(to_json(p.thumbnail)::text, 'null')
       || ', "images" : [' || COALESCE(im.docs, '') || '], "variantLinks" : ['
       || COALESCE(li.docs, '') || '], "variantThumbnails" : [' || COALESCE(vt.docs, '')
       || ']}' AS doc,
       COALESCE(im.n, 0) AS n_images, COALESCE(li.n, 0) AS n_links,
       COALESCE(vt.n, 0) AS n_vthumbs, p.thumbnail IS NOT NULL AS has_thumb
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


def estimate_products(conn: Connection) -> int:
    """The planner's row estimate of product: a progress bar's total needs no count
    (an exact one costs a scan per snapshot); the last tick sets the real total."""
    return max(int(conn.execute(text(
        "SELECT reltuples FROM pg_class WHERE oid = 'product'::regclass")).scalar_one()), 0)


# Summary totals, in the order the summary lists them.
TOTAL_KEYS = ("totalProducts", "totalImages", "totalVariantLinks", "totalThumbnails",
              "totalProductThumbnails", "totalVariantThumbnails")
Row = tuple[bytes, int, int, int, bool]  # document, images, links, variant thumbs, thumbnail?


def live_documents(conn: Connection) -> Generator[Row, None, None]:
    """(document, images, links, variant thumbnails, has thumbnail) per product, in id order.

    Streamed with ``COPY (SNAPSHOT_SQL) TO STDOUT`` in binary format: PostgreSQL
    keeps rendering while Python hashes and writes (a cursor's FETCHes would
    leave one side idle at a time), the documents arrive as raw UTF-8 bytes with
    nothing to unescape or decode, and the counts come with them (a second
    counting pass costs more than parsing four small columns). Callers consume
    every row: leaving a COPY early means cancelling it (``close()`` the
    generator, as every caller does in a ``finally``), which aborts the
    transaction: only for errors."""
    tune_for_bulk(conn)
    raw = conn.connection.driver_connection
    with raw.cursor() as cur, cur.copy(  # type: ignore[union-attr]
            f"COPY ({SNAPSHOT_SQL.text}) TO STDOUT (FORMAT BINARY)") as copy:
        copy.set_types(["bytea", "int8", "int8", "int8", "bool"])
        yield from copy.rows()


class Totals:
    """What the rendered documents hold, summed as they stream by."""

    def __init__(self) -> None:
        self.products = self.images = self.links = self.pthumbs = self.vthumbs = 0

    def add(self, row: Row) -> None:
        self.products += 1
        self.images += row[1]
        self.links += row[2]
        self.vthumbs += row[3]
        self.pthumbs += row[4]

    def as_summary(self) -> dict[str, int]:
        return dict(zip(TOTAL_KEYS, (self.products, self.images, self.links,
                                     self.pthumbs + self.vthumbs, self.pthumbs, self.vthumbs),
                        strict=True))


def stream_snapshot(conn: Connection, writer: SnapshotWriter,
                    on_product: Callable[[int], None] | None = None) -> dict[str, int]:
    """Write every product document; returns the totals for the summary."""
    totals = Totals()
    live = live_documents(conn)
    try:
        for row in live:
            writer.add(row[0])
            totals.add(row)
            if on_product is not None and not totals.products % 1000:
                on_product(totals.products)
    finally:
        live.close()  # an unfinished COPY holds the connection: end it before anything else
    return totals.as_summary()


def match_live(conn: Connection, reader: SnapshotReader) -> dict[str, int] | None:
    """Stream the snapshot's documents against a fresh rendering of the live catalog.

    The rendering is the snapshot query itself, in the caller's transaction, so
    a document equals its live counterpart byte for byte exactly when every
    column of every image and link row and every thumbnail of that product is
    unchanged, and equal streams mean equal id sets. Returns the totals when
    every document matches and they agree with the summary; None otherwise (the
    caller then loads the snapshot to name the differences). The whole body is
    always read, so a tampered file still fails its checksum (SnapshotInvalid)
    before anything is compared. Memory stays flat: one document of each side
    at a time."""
    live = live_documents(conn)
    equal = True
    totals = Totals()
    try:
        for doc in reader.documents():  # raises SnapshotInvalid at the end if tampered
            row = next(live, None)
            if row is None or row[0] != doc:
                equal = False
                continue  # keep reading the file to its end (checksum)
            totals.add(row)
        for _ in live:
            equal = False  # the live catalog has products the snapshot lacks
    finally:
        live.close()  # an unfinished COPY holds the connection: end it before anything else
    summary = totals.as_summary()
    if not equal or any(reader.summary.get(k) != v for k, v in summary.items()):
        return None
    return summary


def require_snapshot_holds(plan: Plan, summary: dict[str, object], uri: str) -> None:
    """Every row the purge deletes must be in the file: the plan counts whole tables,
    the documents only rows under a product (all of them, given Medusa's foreign
    keys; a database without them could hold an image whose product is gone)."""
    pairs = {"images": "totalImages", "variant_links": "totalVariantLinks",
             "product_thumbnails": "totalProductThumbnails",
             "variant_thumbnails": "totalVariantThumbnails"}
    short = {k: (plan.counts[k], summary.get(v)) for k, v in pairs.items()
             if plan.counts[k] != summary.get(v)}
    if short:
        raise DriftDetected(f"Refused: the purge would delete rows snapshot {uri} does not "
                            "hold (" + ", ".join(f"{k}: {n} live, {m} in the snapshot"
                                                  for k, (n, m) in short.items())
                            + "); nothing changed.")


def clean_diffs() -> list[TableDiff]:
    """What compare_with_live reports when snapshot and live are equal."""
    return [TableDiff(table=t) for t in ("image", "product_variant_product_image",
                                         "product.thumbnail", "product_variant.thumbnail")]


# ---------------------------------------------------------------- loading a snapshot

# The documents are copied straight into jsonb: each is parsed once, by the COPY,
# and the element tables below read the binary form. Stored uncompressed
# (EXTERNAL, and no toasting below a full page): nearly every document is over
# the 2 kB at which PostgreSQL would otherwise pglz-compress it, and each
# statement below would then decompress every document again, for a table that
# lives one transaction.
SNAP_DOC_DDL = (
    "CREATE TEMP TABLE _snap_doc (doc jsonb NOT NULL) WITH (toast_tuple_target = 8160) "
    "ON COMMIT DROP",
    "ALTER TABLE _snap_doc ALTER doc SET STORAGE EXTERNAL",
)
COPY_DOCS_SQL = "COPY _snap_doc (doc) FROM STDIN (FORMAT BINARY)"
# Binary COPY framing: the signature, flags and header extension length; per row
# a field count and the field's length; -1 as the trailer. A jsonb value is a
# version byte (1) followed by the JSON text, so the documents go over as they
# are: nothing to escape, and the server still checks the UTF-8 and the JSON.
_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\0" + struct.pack(">ii", 0, 0)
_COPY_TRAILER = struct.pack(">h", -1)
_JSONB_VERSION = b"\x01"
_COPY_CHUNK = 1 << 20  # bytes handed to the driver at a time: memory stays flat

# No intermediate per-product table, no indexes, no ANALYZE: every later
# statement reads these tables whole, once, in hash or merge joins, and the
# planner takes their sizes from the files themselves (measured: the indexes
# and statistics cost more than they saved). jsonb_populate_recordset turns a whole
# array into rows in one call (same rows, same errors for a malformed array as
# populating element by element).
LOAD_SQL = [
    "CREATE TEMP TABLE _snap_image ON COMMIT DROP AS "
    "SELECT r.* FROM _snap_doc d, jsonb_populate_recordset(NULL::image, d.doc->'images') r",
    "CREATE TEMP TABLE _snap_link ON COMMIT DROP AS "
    "SELECT r.* FROM _snap_doc d, "
    "     jsonb_populate_recordset(NULL::product_variant_product_image, d.doc->'variantLinks') r",
    "CREATE TEMP TABLE _snap_product_thumb ON COMMIT DROP AS "
    "SELECT doc->>'id' AS id, doc->>'thumbnail' AS thumbnail FROM _snap_doc "
    "WHERE doc->>'thumbnail' IS NOT NULL",
    "CREATE TEMP TABLE _snap_variant_thumb ON COMMIT DROP AS "
    "SELECT e->>'id' AS id, e->>'thumbnail' AS thumbnail, d.doc->>'id' AS product_id "
    "FROM _snap_doc d, jsonb_array_elements(d.doc->'variantThumbnails') e",
]

LOADED_TOTALS_SQL = text("""
SELECT
  (SELECT count(*) FROM _snap_doc), (SELECT count(DISTINCT doc->>'id') FROM _snap_doc),
  (SELECT count(*) FROM _snap_image), (SELECT count(DISTINCT id) FROM _snap_image),
  (SELECT count(*) FROM _snap_link), (SELECT count(DISTINCT id) FROM _snap_link),
  (SELECT count(*) FROM _snap_product_thumb),
  (SELECT count(*) FROM _snap_variant_thumb), (SELECT count(DISTINCT id) FROM _snap_variant_thumb),
  (SELECT count(*) FROM _snap_doc d, jsonb_array_elements(d.doc->'images') e
     WHERE e->>'product_id' IS DISTINCT FROM d.doc->>'id'),
  (SELECT count(*) FROM _snap_link l WHERE NOT EXISTS
      (SELECT 1 FROM _snap_image i WHERE i.id = l.image_id))
""")


def _format_error(reader: SnapshotReader, exc: BaseException) -> SnapshotInvalid:
    return SnapshotInvalid(f"Snapshot {reader.uri} failed the format check: its documents "
                           f"do not fit the Medusa tables ({str(exc).strip().splitlines()[0]})")


def _copy_documents(conn: Connection, reader: SnapshotReader) -> None:
    """COPY every body document into ``_snap_doc``, in a savepoint.

    A tampered file must be reported as a checksum failure, never as the JSON
    error its damage may also cause. The checksum is only known once the body
    has been read to its end, while the COPY may fail on a document before
    that, so on a data error the rest of the body is still read (which raises
    the checksum or truncation failure if there is one) and only a body whose
    checksum held is reported as failing the format check. (psycopg 3.3 raises
    the server's error only when the COPY ends, after the last document; the
    draining and ``refused`` keep the rule if a driver reports it sooner, or
    reports it instead of the checksum failure that ended the COPY.)"""
    documents = reader.documents()
    refused: SnapshotInvalid | None = None
    raw = conn.connection.driver_connection
    try:
        with conn.begin_nested(), raw.cursor() as cur, cur.copy(COPY_DOCS_SQL) as copy:  # type: ignore[union-attr]
            try:
                buf = bytearray(_COPY_SIGNATURE)
                for doc in documents:  # raises SnapshotInvalid at the end if tampered
                    buf += struct.pack(">hi", 1, len(doc) + 1)
                    buf += _JSONB_VERSION
                    buf += doc
                    if len(buf) >= _COPY_CHUNK:
                        copy.write(buf)
                        buf = bytearray()
                buf += _COPY_TRAILER
                copy.write(buf)
            except SnapshotInvalid as exc:
                refused = exc  # ending the COPY may raise the server's error instead
                raise
    # Not JSON, not UTF-8, or nested past the server's stack (StatementTooComplex, an
    # OperationalError that would otherwise be retried): the server refused a document.
    except (psycopg.DataError, psycopg.errors.StatementTooComplex) as exc:
        if refused is not None:
            raise refused from None
        for _ in documents:  # the rest of the body, for its checksum
            pass
        raise _format_error(reader, exc) from None


def load_snapshot(conn: Connection, reader: SnapshotReader) -> dict[str, int]:
    """Stream the body into temp tables and check it against its own summary.

    A tampered file is reported as a checksum failure, not as a JSON error
    (see _copy_documents); documents that are JSON but do not fit the tables
    fail the format check."""
    tune_for_bulk(conn)
    for statement in SNAP_DOC_DDL:
        conn.execute(text(statement))
    _copy_documents(conn, reader)
    try:
        with conn.begin_nested():
            for statement in LOAD_SQL:
                conn.execute(text(statement))
    except Exception as exc:
        raise _format_error(reader, exc) from None
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


# One pass per loaded table: each snapshot row meets the live row with its id
# (and, for an image, its product; for a link, its image live or restored) by
# LEFT JOINs on primary keys, which never repeat a row, and FILTERs sort it into
# new / present / owner gone. _snap_image ids are distinct (load_snapshot
# refuses a body that repeats ids), so the links' join to it repeats nothing
# either.
RESTORE_PLAN_SQL = text("""
WITH images AS (
  SELECT count(*) FILTER (WHERE i.id IS NULL AND p.id IS NOT NULL) AS new,
         count(i.id) AS present,
         count(*) FILTER (WHERE i.id IS NULL AND p.id IS NULL) AS owner_gone
  FROM _snap_image s
  LEFT JOIN image i ON i.id = s.id
  LEFT JOIN product p ON p.id = s.product_id
), links AS (
  SELECT count(*) FILTER (WHERE l.id IS NULL AND (i.id IS NOT NULL OR sp.id IS NOT NULL)) AS new,
         count(l.id) AS present
  FROM _snap_link s
  LEFT JOIN product_variant_product_image l ON l.id = s.id
  LEFT JOIN image i ON i.id = s.image_id
  LEFT JOIN _snap_image si ON si.id = s.image_id
  LEFT JOIN product sp ON sp.id = si.product_id
), pthumbs AS (
  SELECT count(*) FILTER (WHERE p.id IS NOT NULL AND p.thumbnail IS NULL) AS set,
         count(p.thumbnail) AS kept, count(*) FILTER (WHERE p.id IS NULL) AS owner_gone
  FROM _snap_product_thumb s LEFT JOIN product p ON p.id = s.id
), vthumbs AS (
  SELECT count(*) FILTER (WHERE v.id IS NOT NULL AND v.thumbnail IS NULL) AS set,
         count(v.thumbnail) AS kept, count(*) FILTER (WHERE v.id IS NULL) AS owner_gone
  FROM _snap_variant_thumb s LEFT JOIN product_variant v ON v.id = s.id
)
SELECT images.new, images.present, images.owner_gone, links.new, links.present,
       pthumbs.set, pthumbs.kept, vthumbs.set, vthumbs.kept,
       pthumbs.owner_gone + vthumbs.owner_gone
FROM images, links, pthumbs, vthumbs
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


def insert_snapshot_rows(conn: Connection, plan: Plan) -> dict[str, int]:
    """Same ids, urls, ranks, metadata and timestamps; never clobbers a newer thumbnail.

    Inserts the rows ``plan`` (restore_plan, this transaction, under
    lock_media_tables: nothing else writes these tables until we commit) counts
    as new: absent from the table and whose product (for a link: image)
    exists. No statement here reads the table it grows: an INSERT whose own NOT
    EXISTS did got planned for the (empty, after a purge) table as a nested
    loop over a sequential scan, every inserted row lengthening the scan for
    the next: quadratic, hours at 1M images. When the plan found some rows
    already present, ON CONFLICT skips them (probing the primary key row by
    row; the snapshot's own ids are distinct, load_snapshot checked); when it
    found none, as after a purge, a plain INSERT skips that probe, and a
    present id would abort the transaction rather than be skipped silently."""
    images = conn.execute(text(
        "INSERT INTO image SELECT s.* FROM _snap_image s "
        "WHERE EXISTS (SELECT 1 FROM product p WHERE p.id = s.product_id)"
        + _skip_present(plan, "images_already_present"))).rowcount
    links = conn.execute(text(
        "INSERT INTO product_variant_product_image SELECT s.* FROM _snap_link s "
        "WHERE EXISTS (SELECT 1 FROM image i WHERE i.id = s.image_id)"
        + _skip_present(plan, "variant_links_already_present"))).rowcount
    pthumbs = conn.execute(text(
        "UPDATE product p SET thumbnail = s.thumbnail, updated_at = now() "
        "FROM _snap_product_thumb s WHERE p.id = s.id AND p.thumbnail IS NULL")).rowcount
    vthumbs = conn.execute(text(
        "UPDATE product_variant v SET thumbnail = s.thumbnail, updated_at = now() "
        "FROM _snap_variant_thumb s WHERE v.id = s.id AND v.thumbnail IS NULL")).rowcount
    return {"images": images, "variant_links": links, "product_thumbnails": pthumbs,
            "variant_thumbnails": vthumbs}


def _skip_present(plan: Plan, count: str) -> str:
    return " ON CONFLICT (id) DO NOTHING" if plan.counts[count] else ""


def snapshot_image_urls(conn: Connection) -> Iterator[tuple[str, str]]:
    """(image id, url) of the loaded snapshot, streamed, for object checks."""
    result = conn.execute(text("SELECT id, url FROM _snap_image ORDER BY id")
                          .execution_options(stream_results=True, yield_per=2000))
    yield from ((image_id, url) for image_id, url in result)
