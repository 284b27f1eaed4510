"""Purge every image reference: the apply that removes exactly the approved plan.

The plan (``plan.py``) is counts and a digest of every affected row; the
apply locks the media tables, proves snapshot == live == approved plan, deletes
and writes its audit row, all in one transaction. The lock is shared with the
restore (it imports ``lock_media_tables`` from here).
"""

from __future__ import annotations

import contextlib
from datetime import datetime

import psycopg
from prefect import get_run_logger, task
from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from safeops.core.db import engine_for, fingerprint, read_snapshot, transaction
from safeops.core.errors import DriftDetected
from safeops.core.models import Approval, Plan, describe_diffs
from safeops.core.settings import describe_target, get_settings
from tasks.common.audit import applied_counts, write_audit
from tasks.common.guards import FileCheck, refuse_if_plan_moved, require_as_planned
from tasks.common.retry import TRANSIENT_RETRIES
from tasks.common.run_id import current_flow_run_id
from tasks.common.snapshots import open_snapshot, refuse_foreign
from tasks.media.loaded import compare_with_live, load_snapshot, match_live
from tasks.media.plan import purge_plan, require_snapshot_holds
from tasks.media.snapshot import MEDIA_FORMAT

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


# ---------------------------------------------------------------- the cascade's index

# ``DELETE FROM image`` fires the ON DELETE CASCADE of
# ``product_variant_product_image_image_id_foreign`` once per image row: PostgreSQL's
# RI trigger runs ``DELETE FROM ONLY product_variant_product_image WHERE $1 = image_id``
# for each. Medusa's only index on that column is partial (``WHERE deleted_at IS
# NULL``), which that query cannot use, so every firing scans the whole link table.
# Deleting the links first does not help: the scan still visits every tuple this
# transaction deleted (they stay on their pages until a vacuum after the commit).
# Measured here (PostgreSQL 15, the bench catalog, the two DELETEs in one transaction
# under the purge's lock): 20k images, 8,750 links: links first then images 2.49 s;
# with a plain btree index on image_id built in the transaction 0.10 s (index 0.01 s);
# 200k images, 87,500 links: 1.7-3.2 s with the index (index 0.1-0.16 s), hours
# without (quadratic: 200k scans of the link table). So the apply builds that index
# inside its own transaction, after its lock (CREATE INDEX takes SHARE on the link
# table: compatible with our SHARE ROW EXCLUSIVE, and every writer already waits on
# that), and drops it just before the commit. The DROP takes ACCESS EXCLUSIVE on the
# link table until the commit, a few milliseconds later; it waits for reads already
# running on that table, under the apply's lock_timeout (a timeout rolls everything
# back and the task retries). Other sessions never see the index (its catalog row is
# never committed), and a killed apply leaves none. Skipped when the table already
# has a plain btree index on image_id, and when the role may not create one (not the
# table's owner): then the purge is as slow as the cascade makes it, never wrong.
CASCADE_INDEX = "safeops_purge_link_image_id"
HAS_FULL_INDEX_SQL = text("""
SELECT EXISTS (
    SELECT 1 FROM pg_index x
    JOIN pg_class ic ON ic.oid = x.indexrelid
    JOIN pg_am am ON am.oid = ic.relam
    JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = x.indkey[0]
    WHERE x.indrelid = 'product_variant_product_image'::regclass
      AND a.attname = 'image_id' AND am.amname = 'btree'
      AND x.indpred IS NULL AND x.indisvalid AND x.indisready)
""")


def index_for_cascade(conn: Connection) -> bool:
    """Build the link table's image_id index for this transaction; True when built."""
    if conn.execute(HAS_FULL_INDEX_SQL).scalar_one():
        return False
    try:
        with conn.begin_nested():
            conn.execute(
                text(f"CREATE INDEX {CASCADE_INDEX} ON product_variant_product_image (image_id)")
            )
    except DBAPIError as exc:
        if not isinstance(
            exc.orig, psycopg.errors.InsufficientPrivilege | psycopg.errors.DuplicateTable
        ):
            raise
        with contextlib.suppress(Exception):  # outside a run there is no run logger
            get_run_logger().warning(
                "could not build the cascade's index on product_variant_product_image(image_id) "
                "(%s): the image DELETE scans the link table once per image",
                str(exc.orig).strip().splitlines()[0],
            )
        return False
    return True


def drop_cascade_index(conn: Connection, built: bool) -> None:
    """Leave the store's schema as we found it; the last statement before the commit."""
    if built:
        conn.execute(text(f"DROP INDEX {CASCADE_INDEX}"))


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
            built = index_for_cascade(conn)
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
            drop_cascade_index(conn, built)
    finally:
        if file_check is not None:
            file_check.cancel()
    return applied
