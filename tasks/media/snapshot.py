"""Take a media snapshot: every product that holds an image reference, one document each.

PostgreSQL renders the documents (SNAPSHOT_SQL) and streams them with a binary
COPY while Python hashes and writes them; the totals for the summary are summed
on the way. The same rendering is what ``loaded.match_live`` compares a file
with, so it lives here, beside the task that first needs it. A purge asks for
its plan too (``plan=True``): computed in the same REPEATABLE READ view that
rendered the file, it describes exactly the rows the file holds, so the purge
needs no second rendering to prove the file against the catalog.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from prefect import task
from sqlalchemy import Connection, text

from safeops.core.db import engine_for, fingerprint, read_snapshot
from safeops.core.models import SnapshotRef
from safeops.core.settings import describe_target
from safeops.core.snapshot_writer import SnapshotWriter
from tasks.common.artifacts import Progress
from tasks.common.register import record_snapshot, target_is_read_only
from tasks.common.retry import TRANSIENT_RETRIES
from tasks.common.snapshots import (
    finish_and_publish,
    new_writer,
    now_utc,
    source_fields,
    written_ref,
)
from tasks.media.bulk import tune_for_bulk
from tasks.media.plan import plan_of_digests

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
_SNAPSHOT_TEMPLATE = """
WITH images AS (
    SELECT r.product_id, count(*) AS n, string_agg(r.doc, ',') AS docs{sum_doc}
    FROM (SELECT i.product_id, row_to_json(i)::text AS doc FROM image i
          ORDER BY i.product_id, i.id) r
    GROUP BY r.product_id
), links AS (
    SELECT r.product_id, count(*) AS n, string_agg(r.doc, ',') AS docs{sum_doc}
    FROM (SELECT i.product_id, row_to_json(l)::text AS doc
          FROM product_variant_product_image l JOIN image i ON i.id = l.image_id
          ORDER BY i.product_id, l.id) r
    GROUP BY r.product_id
), vthumbs AS (
    SELECT r.product_id, count(*) AS n, string_agg(r.doc, ',') AS docs{sum_pair}
    FROM (SELECT v.product_id, json_build_object('id', v.id, 'thumbnail', v.thumbnail)::text AS doc
                 {pair}
          FROM product_variant v WHERE v.thumbnail IS NOT NULL AND v.product_id IS NOT NULL
          ORDER BY v.product_id, v.id) r
    GROUP BY r.product_id
)
SELECT '{{"id" : ' || to_json(p.id)::text || ', "handle" : ' || to_json(p.handle)::text
       || ', "thumbnail" : ' || COALESCE(to_json(p.thumbnail)::text, 'null')
       || ', "images" : [' || COALESCE(im.docs, '') || '], "variantLinks" : ['
       || COALESCE(li.docs, '') || '], "variantThumbnails" : [' || COALESCE(vt.docs, '')
       || ']}}' AS doc,
       COALESCE(im.n, 0) AS n_images, COALESCE(li.n, 0) AS n_links,
       COALESCE(vt.n, 0) AS n_vthumbs, p.thumbnail IS NOT NULL AS has_thumb{outer}
FROM product p
LEFT JOIN images im ON im.product_id = p.id
LEFT JOIN links li ON li.product_id = p.id
LEFT JOIN vthumbs vt ON vt.product_id = p.id
WHERE p.thumbnail IS NOT NULL OR im.docs IS NOT NULL OR vt.docs IS NOT NULL
ORDER BY p.id
"""
SNAPSHOT_SQL = text(_SNAPSHOT_TEMPLATE.format(sum_doc="", sum_pair="", pair="", outer=""))
# The same rendering, plus per product the purge plan's digests (plan.PURGE_PLAN_SQL:
# a sum of hashtextextended over each row's text) of the very texts it renders:
# the plan of exactly the file's rows for the price of a hash per row (at 300k
# images a separate plan pass cost 1.0-1.1 s beside a 1.8-2.7 s snapshot).
SNAPSHOT_PLAN_SQL = text(
    _SNAPSHOT_TEMPLATE.format(
        sum_doc=", sum(hashtextextended(r.doc, 0)) AS h",
        sum_pair=", sum(hashtextextended(r.pair, 0)) AS h",
        pair=", json_build_array(v.id, v.thumbnail)::text AS pair",
        outer=", COALESCE(im.h, 0) AS h_images, COALESCE(li.h, 0) AS h_links,"
        " COALESCE(vt.h, 0) AS h_vthumbs,"
        " CASE WHEN p.thumbnail IS NOT NULL"
        " THEN hashtextextended(json_build_array(p.id, p.thumbnail)::text, 0) ELSE 0 END"
        " AS h_pthumb",
    )
)


def estimate_products(conn: Connection) -> int:
    """The planner's row estimate of product: a progress bar's total needs no count
    (an exact one costs a scan per snapshot); the last tick sets the real total."""
    return max(
        int(
            conn.execute(
                text("SELECT reltuples FROM pg_class WHERE oid = 'product'::regclass")
            ).scalar_one()
        ),
        0,
    )


# Summary totals, in the order the summary lists them.
TOTAL_KEYS = (
    "totalProducts",
    "totalImages",
    "totalVariantLinks",
    "totalThumbnails",
    "totalProductThumbnails",
    "totalVariantThumbnails",
)
# document, images, links, variant thumbs, thumbnail? (then, with digests: their sums)
Row = tuple[Any, ...]


def live_documents(conn: Connection, *, digests: bool = False) -> Generator[Row, None, None]:
    """(document, images, links, variant thumbnails, has thumbnail) per product, in id order.

    Streamed with ``COPY (SNAPSHOT_SQL) TO STDOUT`` in binary format: PostgreSQL
    keeps rendering while Python hashes and writes (a cursor's FETCHes would
    leave one side idle at a time), the documents arrive as raw UTF-8 bytes with
    nothing to unescape or decode, and the counts come with them (a second
    counting pass costs more than parsing four small columns). Callers consume
    every row: leaving a COPY early means cancelling it (``close()`` the
    generator, as every caller does in a ``finally``), which aborts the
    transaction: only for errors. ``digests``: each row also carries the plan's
    digest sums of its images, links, variant thumbnails and thumbnail."""
    tune_for_bulk(conn)
    raw = conn.connection.driver_connection
    sql = (SNAPSHOT_PLAN_SQL if digests else SNAPSHOT_SQL).text
    types = ["bytea", "int8", "int8", "int8", "bool"]
    with (
        raw.cursor() as cur,  # type: ignore[union-attr]
        cur.copy(f"COPY ({sql}) TO STDOUT (FORMAT BINARY)") as copy,
    ):
        copy.set_types([*types, "numeric", "numeric", "numeric", "int8"] if digests else types)
        yield from copy.rows()


class Totals:
    """What the rendered documents hold, summed as they stream by."""

    def __init__(self) -> None:
        self.products = self.images = self.links = self.pthumbs = self.vthumbs = 0
        self.digests = [0, 0, 0, 0]  # images, links, variant thumbnails, thumbnails

    def add(self, row: Row) -> None:
        self.products += 1
        self.images += row[1]
        self.links += row[2]
        self.vthumbs += row[3]
        self.pthumbs += row[4]
        if len(row) > 5:
            for i, value in enumerate(row[5:9]):
                self.digests[i] += int(value)

    def plan_digests(self) -> dict[str, tuple[int, int]]:
        """(count, digest sum) per kind, as plan.PURGE_PLAN_SQL has them."""
        d = self.digests
        return {
            "images": (self.images, d[0]),
            "variant_links": (self.links, d[1]),
            "product_thumbnails": (self.pthumbs, d[3]),
            "variant_thumbnails": (self.vthumbs, d[2]),
        }

    def as_summary(self) -> dict[str, int]:
        return dict(
            zip(
                TOTAL_KEYS,
                (
                    self.products,
                    self.images,
                    self.links,
                    self.pthumbs + self.vthumbs,
                    self.pthumbs,
                    self.vthumbs,
                ),
                strict=True,
            )
        )


def stream_snapshot(
    conn: Connection,
    writer: SnapshotWriter,
    on_product: Callable[[int], None] | None = None,
    totals: Totals | None = None,
) -> dict[str, int]:
    """Write every product document; returns the totals for the summary. Given
    ``totals``, sums into it, with the plan's digests."""
    digests = totals is not None
    totals = totals if totals is not None else Totals()
    live = live_documents(conn, digests=digests)
    try:
        for row in live:
            writer.add(row[0])
            totals.add(row)
            if on_product is not None and not totals.products % 1000:
                on_product(totals.products)
    finally:
        live.close()  # an unfinished COPY holds the connection: end it before anything else
    return totals.as_summary()


SNAPSHOT_PREFIX = "medusa-media-snapshot"


@task(name="snapshot-media", **TRANSIENT_RETRIES)
def take_media_snapshot(
    target: str, snapshot_location: str | None = None, *, plan: bool = False
) -> SnapshotRef:
    """Stream every product holding a reference to a new snapshot file.

    ``plan``: also derive the purge plan in the same view, after the documents
    (the snapshot's ``plan``): the digest of exactly the rows the file was
    rendered from, which a verify reading the file back and the apply under
    its lock prove the file and the live rows against."""
    created = now_utc()
    writer = new_writer(MEDIA_FORMAT, "products", snapshot_location)
    try:
        with read_snapshot(engine_for(target)) as conn:
            fp = fingerprint(conn)
            progress = Progress(
                "media-snapshot-progress",
                estimate_products(conn),
                "products written to the snapshot",
            )
            counted = Totals() if plan else None
            totals = stream_snapshot(conn, writer, progress.update, counted)
            progress.finish(totals["totalProducts"])
            in_view = None
            if counted is not None:
                # The products count is the documents' (the same products the plan's
                # count of products in scope would find, in the same view).
                in_view = plan_of_digests(
                    conn, describe_target(target), counted.products, counted.plan_digests()
                )
            read_only = target_is_read_only(conn)
        uri = finish_and_publish(
            writer,
            name_prefix=SNAPSHOT_PREFIX,
            created_at=created,
            summary={**totals, **source_fields(fp, read_only)},
            location=snapshot_location,
        )
        record_snapshot(
            engine_for(target),
            kind=MEDIA_FORMAT,
            uri=uri,
            writer=writer,
            totals=totals,
            created_at=created,
            read_only=read_only,
        )
    except BaseException:
        writer.discard()
        raise
    return written_ref(writer, uri, totals, fp, in_view)
