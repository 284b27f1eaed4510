"""A snapshot file against the live rows: streamed side by side, or loaded into temp tables.

Verify, purge, restore and the refs migration all need the same two things:
the fast proof that a file equals a fresh rendering of the live catalog
(``match_live``), and, when it does not or when rows must be joined, the file
loaded into ``ON COMMIT DROP`` temporary tables (``_snap_*``, binary COPY) so
comparison, purge and restore are set-based SQL whatever the catalog size.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import psycopg
from sqlalchemy import Connection, text

from safeops.core.errors import SnapshotInvalid
from safeops.core.models import TableDiff
from safeops.core.snapshot_reader import SnapshotReader
from tasks.media.bulk import tune_for_bulk
from tasks.media.snapshot import Totals, live_documents

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
    return SnapshotInvalid(
        f"Snapshot {reader.uri} failed the format check: its documents "
        f"do not fit the Medusa tables ({str(exc).strip().splitlines()[0]})"
    )


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
    (
        products,
        d_products,
        images,
        d_images,
        links,
        d_links,
        pthumbs,
        vthumbs,
        d_vthumbs,
        misowned,
        dangling,
    ) = conn.execute(LOADED_TOTALS_SQL).one()
    loaded = {
        "totalProducts": products,
        "totalImages": images,
        "totalVariantLinks": links,
        "totalProductThumbnails": pthumbs,
        "totalVariantThumbnails": vthumbs,
        "totalThumbnails": pthumbs + vthumbs,
    }
    problems = []
    for key, value in loaded.items():
        if reader.summary.get(key) != value:
            problems.append(
                f"{key} is {reader.summary.get(key)!r} in the summary but the body holds {value}"
            )
    if (products, images, links, vthumbs) != (d_products, d_images, d_links, d_vthumbs):
        problems.append("the body repeats ids")
    if misowned or dangling:
        problems.append(
            f"{misowned} image(s) under the wrong product, {dangling} link(s) to "
            "images absent from the snapshot"
        )
    if problems:
        raise SnapshotInvalid(
            f"Snapshot {reader.uri} failed the totals check: " + "; ".join(problems)
        )
    return loaded


def snapshot_image_urls(conn: Connection) -> Iterator[tuple[str, str]]:
    """(image id, url) of the loaded snapshot, streamed, for object checks."""
    result = conn.execute(
        text("SELECT id, url FROM _snap_image ORDER BY id").execution_options(
            stream_results=True, yield_per=2000
        )
    )
    yield from ((image_id, url) for image_id, url in result)


# ---------------------------------------------------------------- live comparison


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


def clean_diffs() -> list[TableDiff]:
    """What compare_with_live reports when snapshot and live are equal."""
    return [
        TableDiff(table=t)
        for t in (
            "image",
            "product_variant_product_image",
            "product.thumbnail",
            "product_variant.thumbnail",
        )
    ]


def _diff(
    conn: Connection, table: str, missing_sql: str, extra_sql: str, changed_sql: str | None
) -> TableDiff:
    def count_first(sql: str) -> tuple[int, list[str]]:
        n, first = conn.execute(
            text(f"SELECT count(*), (array_agg(id ORDER BY id))[1:5] FROM ({sql}) q")
        ).one()
        return int(n), list(first or [])

    missing, first_missing = count_first(missing_sql)
    extra, first_extra = count_first(extra_sql)
    changed, first_changed = count_first(changed_sql) if changed_sql else (0, [])
    return TableDiff(
        table=table,
        missing=missing,
        extra=extra,
        changed=changed,
        first_missing=first_missing,
        first_extra=first_extra,
        first_changed=first_changed,
    )


def compare_with_live(conn: Connection) -> list[TableDiff]:
    """Loaded snapshot vs the database: ids and, for rows in both, full content."""
    return [
        _diff(
            conn,
            "image",
            "SELECT s.id FROM _snap_image s WHERE NOT EXISTS "
            "(SELECT 1 FROM image i WHERE i.id = s.id)",
            "SELECT i.id FROM image i WHERE NOT EXISTS "
            "(SELECT 1 FROM _snap_image s WHERE s.id = i.id)",
            "SELECT s.id FROM _snap_image s JOIN image i ON i.id = s.id "
            "WHERE ROW(s.*) IS DISTINCT FROM ROW(i.*)",
        ),
        _diff(
            conn,
            "product_variant_product_image",
            "SELECT s.id FROM _snap_link s WHERE NOT EXISTS "
            "(SELECT 1 FROM product_variant_product_image l WHERE l.id = s.id)",
            "SELECT l.id FROM product_variant_product_image l WHERE NOT EXISTS "
            "(SELECT 1 FROM _snap_link s WHERE s.id = l.id)",
            "SELECT s.id FROM _snap_link s JOIN product_variant_product_image l ON l.id = s.id "
            "WHERE ROW(s.*) IS DISTINCT FROM ROW(l.*)",
        ),
        _diff(
            conn,
            "product.thumbnail",
            "SELECT s.id FROM _snap_product_thumb s LEFT JOIN product p ON p.id = s.id "
            "WHERE p.thumbnail IS NULL",
            "SELECT p.id FROM product p WHERE p.thumbnail IS NOT NULL AND NOT EXISTS "
            "(SELECT 1 FROM _snap_product_thumb s WHERE s.id = p.id)",
            "SELECT s.id FROM _snap_product_thumb s JOIN product p ON p.id = s.id "
            "WHERE p.thumbnail IS NOT NULL AND p.thumbnail <> s.thumbnail",
        ),
        _diff(
            conn,
            "product_variant.thumbnail",
            "SELECT s.id FROM _snap_variant_thumb s LEFT JOIN product_variant v ON v.id = s.id "
            "WHERE v.thumbnail IS NULL",
            "SELECT v.id FROM product_variant v WHERE v.thumbnail IS NOT NULL "
            "AND v.product_id IS NOT NULL AND NOT EXISTS "
            "(SELECT 1 FROM _snap_variant_thumb s WHERE s.id = v.id)",
            "SELECT s.id FROM _snap_variant_thumb s JOIN product_variant v ON v.id = s.id "
            "WHERE v.thumbnail IS NOT NULL AND v.thumbnail <> s.thumbnail",
        ),
    ]
