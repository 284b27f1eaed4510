"""Purge every image reference: the plan people approve, and the apply that removes exactly it.

The plan is counts and a digest of every affected row (PURGE_PLAN_SQL); the
apply locks the media tables, proves snapshot == live == approved plan, deletes
and writes its audit row, all in one transaction. The lock is shared with the
restore (it imports ``lock_media_tables`` from here).
"""

from __future__ import annotations

from datetime import datetime

from prefect import task
from sqlalchemy import Connection, text

from safeops.core.db import engine_for, fingerprint, read_snapshot, transaction
from safeops.core.errors import DriftDetected
from safeops.core.models import Approval, Plan, describe_diffs, plan_hash_of
from safeops.core.settings import describe_target, get_settings
from tasks.common.audit import applied_counts, write_audit
from tasks.common.guards import FileCheck, refuse_if_plan_moved, require_as_planned
from tasks.common.retry import TRANSIENT_RETRIES
from tasks.common.run_id import current_flow_run_id
from tasks.common.snapshots import open_snapshot, refuse_foreign
from tasks.media.loaded import compare_with_live, load_snapshot, match_live
from tasks.media.snapshot import MEDIA_FORMAT, tune_for_bulk

# ---------------------------------------------------------------- plan

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


# ---------------------------------------------------------------- apply

LOCK_SQL = text(
    "LOCK TABLE product, product_variant, image, product_variant_product_image "
    "IN SHARE ROW EXCLUSIVE MODE"
)


def lock_media_tables(conn: Connection) -> None:
    """SHARE ROW EXCLUSIVE: readers (the storefront) carry on; every writer,
    Medusa's and a second safeops run alike, waits until we commit. The mode
    conflicts with itself, so two purges/restores serialise; lock_timeout turns
    a long wait behind someone else's transaction into a retryable error."""
    conn.execute(LOCK_SQL)


def delete_snapshot_rows(conn: Connection) -> dict[str, int]:
    """Exactly the snapshot's rows; callers have proven snapshot == live first."""
    links = conn.execute(
        text("DELETE FROM product_variant_product_image l USING _snap_link s WHERE l.id = s.id")
    ).rowcount
    images = conn.execute(
        text("DELETE FROM image i USING _snap_image s WHERE i.id = s.id")
    ).rowcount
    pthumbs = conn.execute(
        text(
            "UPDATE product p SET thumbnail = NULL, updated_at = now() FROM _snap_product_thumb s "
            "WHERE p.id = s.id AND p.thumbnail = s.thumbnail"
        )
    ).rowcount
    vthumbs = conn.execute(
        text(
            "UPDATE product_variant v SET thumbnail = NULL, updated_at = now() "
            "FROM _snap_variant_thumb s WHERE v.id = s.id AND v.thumbnail = s.thumbnail"
        )
    ).rowcount
    return {
        "images": images,
        "variant_links": links,
        "product_thumbnails": pthumbs,
        "variant_thumbnails": vthumbs,
    }


def delete_matched_rows(conn: Connection) -> dict[str, int]:
    """The snapshot's rows, once match_live proved (under the lock) that the live
    scope is exactly the snapshot: every image (each belongs to a product), every
    link (each points at an image), every product thumbnail, every thumbnail of a
    variant that belongs to a product. Plain set-based statements, as the SQL
    fallback runs them, with no join against a loaded copy."""
    links = conn.execute(text("DELETE FROM product_variant_product_image")).rowcount
    images = conn.execute(text("DELETE FROM image")).rowcount
    pthumbs = conn.execute(
        text("UPDATE product SET thumbnail = NULL, updated_at = now() WHERE thumbnail IS NOT NULL")
    ).rowcount
    vthumbs = conn.execute(
        text(
            "UPDATE product_variant SET thumbnail = NULL, updated_at = now() "
            "WHERE thumbnail IS NOT NULL AND product_id IS NOT NULL"
        )
    ).rowcount
    return {
        "images": images,
        "variant_links": links,
        "product_thumbnails": pthumbs,
        "variant_thumbnails": vthumbs,
    }


# ---------------------------------------------------------------- tasks


@task(name="plan-media-purge", **TRANSIENT_RETRIES)
def plan_media_purge(target: str) -> Plan:
    with read_snapshot(engine_for(target)) as conn:
        return purge_plan(conn, describe_target(target))


def _ensure_equal(conn: object, uri: str) -> None:
    diffs = compare_with_live(conn)  # type: ignore[arg-type]
    dirty = describe_diffs(diffs)
    if dirty:
        raise DriftDetected(f"Refused: drift since snapshot {uri}: {dirty}; nothing changed.")


@task(name="apply-media-purge", **TRANSIENT_RETRIES)
def apply_media_purge(
    target: str,
    snapshot_uri: str,
    approved_plan_hash: str,
    approval: Approval,
    started_at: datetime,
    verified_sha256: str = "",
    verified_plan_hash: str = "",
) -> dict[str, int]:
    """One transaction: lock, prove snapshot == live == approved plan, delete, audit.

    Two proofs reach the same conclusion. Fast, when a verify of this run proved
    the file equal to the live rows and recorded their plan hash: the file still
    hashes to the bytes that verify read (hashed in a thread meanwhile), and the
    plan re-derived under the lock, a digest of every row, still equals the
    verified one; so the rows are those the file holds, at the cost of one pass
    of digests instead of re-rendering the catalog. Thorough, otherwise (no
    verify to lean on, or the rows moved since): compare the file with the live
    rows under the lock, and name any drift."""
    flow_run_id = current_flow_run_id()
    settings = get_settings()
    file_check = (
        FileCheck(snapshot_uri, verified_sha256) if verified_sha256 and verified_plan_hash else None
    )
    try:
        with (
            open_snapshot(snapshot_uri, MEDIA_FORMAT) as reader,
            transaction(engine_for(target), lock_timeout_s=settings.lock_timeout_s) as conn,
        ):
            done = applied_counts(conn, flow_run_id, "purge-product-media", approved_plan_hash)
            if done is not None:
                return done  # this run committed before its connection dropped
            lock_media_tables(conn)
            refuse_foreign(reader, fingerprint(conn), force=False)
            plan = purge_plan(conn, describe_target(target), count_products=False)
            if file_check is not None and plan.plan_hash == verified_plan_hash:
                file_check.require_unchanged()
                matched, body_sha256 = True, str(reader.summary["bodySha256"])
                proof = "verified file + row digest"
            else:
                matched = match_live(conn, reader) is not None
                if not matched:
                    with open_snapshot(snapshot_uri, MEDIA_FORMAT) as again:
                        load_snapshot(conn, again)
                    _ensure_equal(conn, snapshot_uri)
                body_sha256, proof = reader.actual_sha256, "file compared with the live rows"
            require_snapshot_holds(plan, reader.summary, snapshot_uri)
            refuse_if_plan_moved(plan, approved_plan_hash, "the plan changed since approval")
            applied = delete_matched_rows(conn) if matched else delete_snapshot_rows(conn)
            require_as_planned(applied, plan, "Purge changed")
            write_audit(
                conn,
                flow_run_id=flow_run_id,
                flow_name="purge-product-media",
                target=describe_target(target),
                plan_hash=plan.plan_hash,
                approval=approval,
                counts={
                    "planned": plan.counts,
                    "applied": applied,
                    "snapshotSha256": body_sha256,
                    "proof": proof,
                },
                snapshot_uri=snapshot_uri,
                started_at=started_at,
            )
    finally:
        if file_check is not None:
            file_check.cancel()
    return applied
