"""Restore product media from a snapshot: the plan people approve, and the apply that inserts it.

Both load the snapshot into temp tables (``loaded``); RESTORE_PLAN_SQL sorts
every snapshot row into new / already present / owner gone, and every new image
by what Medusa did to its product since (soft-deleted it, gave it other
images: CLASSIFY_SQL), and the apply inserts exactly the new ones under the
purge's lock (``lock_media_tables``) as Medusa would hold them now, never
clobbering a thumbnail set since. A file edited after the purge that
wrote it is refused (``verify.refuse_if_edited``).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from prefect import task
from sqlalchemy import Connection, text

from safeops.core.db import engine_for, fingerprint, read_snapshot, transaction
from safeops.core.models import Approval, Plan, plan_hash_of
from safeops.core.settings import describe_target, get_settings
from safeops.core.snapshot_reader import SnapshotReader
from tasks.common.audit import applied_counts, write_audit
from tasks.common.guards import refuse_if_plan_moved, require_as_planned
from tasks.common.register import trace_of
from tasks.common.retry import TRANSIENT_RETRIES
from tasks.common.run_id import current_flow_run_id
from tasks.common.snapshots import open_snapshot, refuse_foreign
from tasks.media.loaded import load_snapshot
from tasks.media.purge import lock_media_tables
from tasks.media.snapshot import MEDIA_FORMAT
from tasks.media.verify import refuse_if_edited

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


# The loaded rows are first made what Medusa would hold now (restore_plan's
# classification, this transaction): images of a product soft-deleted since take
# its deleted_at unless they have their own; images of a product that gained
# images since are numbered after its highest live rank, in snapshot order. Only
# rows still absent are renumbered, and both statements touch only the few rows
# of such products (and run only when the plan counted any).
SOFT_DELETE_WITH_PRODUCT_SQL = text(
    "UPDATE _snap_image s SET deleted_at = sd.deleted_at FROM _restore_since sd "
    "WHERE sd.id = s.product_id AND s.deleted_at IS NULL"
)
RANK_AFTER_NEWER_SQL = text("""
UPDATE _snap_image s SET rank = o.rank
FROM (SELECT x.id, n.top_rank + row_number() OVER (PARTITION BY x.product_id
                                                   ORDER BY x.rank, x.id) AS rank
      FROM _snap_image x JOIN _restore_newer n ON n.product_id = x.product_id
      WHERE NOT EXISTS (SELECT 1 FROM image i WHERE i.id = x.id)) o
WHERE o.id = s.id
""")


def insert_snapshot_rows(conn: Connection, plan: Plan) -> dict[str, int]:
    """Same ids, urls, ranks, metadata and timestamps; never clobbers a newer thumbnail.

    Inserts the rows ``plan`` (restore_plan, this transaction, under
    lock_media_tables: nothing else writes these tables until we commit) counts
    as new: absent from the table and whose product (for a link: image)
    exists. Under a product soft-deleted since the snapshot, images come back
    soft-deleted and no thumbnail is set; under a product that gained images
    since, they follow those (see _restore_since, _restore_newer). No statement
    here reads the table it grows: an INSERT whose own NOT
    EXISTS did got planned for the (empty, after a purge) table as a nested
    loop over a sequential scan, every inserted row lengthening the scan for
    the next: quadratic, hours at 1M images. When the plan found some rows
    already present, ON CONFLICT skips them (probing the primary key row by
    row; the snapshot's own ids are distinct, load_snapshot checked); when it
    found none, as after a purge, a plain INSERT skips that probe, and a
    present id would abort the transaction rather than be skipped silently."""
    if plan.counts["images_product_soft_deleted"]:
        conn.execute(SOFT_DELETE_WITH_PRODUCT_SQL)
    if plan.counts["images_after_newer_images"]:
        conn.execute(RANK_AFTER_NEWER_SQL)
    images = conn.execute(
        text(
            "INSERT INTO image SELECT s.* FROM _snap_image s "
            "WHERE EXISTS (SELECT 1 FROM product p WHERE p.id = s.product_id)"
            + _skip_present(plan, "images_already_present")
        )
    ).rowcount
    links = conn.execute(
        text(
            "INSERT INTO product_variant_product_image SELECT s.* FROM _snap_link s "
            "WHERE EXISTS (SELECT 1 FROM image i WHERE i.id = s.image_id)"
            + _skip_present(plan, "variant_links_already_present")
        )
    ).rowcount
    pthumbs = conn.execute(
        text(
            "UPDATE product p SET thumbnail = s.thumbnail, updated_at = now() "
            "FROM _snap_product_thumb s WHERE p.id = s.id AND p.thumbnail IS NULL "
            "AND NOT EXISTS (SELECT 1 FROM _restore_since sd WHERE sd.id = p.id)"
        )
    ).rowcount
    vthumbs = conn.execute(
        text(
            "UPDATE product_variant v SET thumbnail = s.thumbnail, updated_at = now() "
            "FROM _snap_variant_thumb s WHERE v.id = s.id AND v.thumbnail IS NULL "
            "AND NOT EXISTS (SELECT 1 FROM _restore_since sd WHERE sd.id = s.product_id)"
        )
    ).rowcount
    return {
        "images": images,
        "variant_links": links,
        "product_thumbnails": pthumbs,
        "variant_thumbnails": vthumbs,
    }


def _skip_present(plan: Plan, count: str) -> str:
    return " ON CONFLICT (id) DO NOTHING" if plan.counts[count] else ""


# ---------------------------------------------------------------- tasks


@task(name="plan-media-restore", **TRANSIENT_RETRIES)
def plan_media_restore(target: str, uri: str, force: bool, allow_untraced: bool = False) -> Plan:
    with open_snapshot(uri, MEDIA_FORMAT) as reader, read_snapshot(engine_for(target)) as conn:
        return _traced_plan(conn, target, uri, reader, force, allow_untraced)


def _traced_plan(
    conn: Connection,
    target: str,
    uri: str,
    reader: SnapshotReader,
    force: bool,
    allow_untraced: bool,
) -> Plan:
    """The plan of a snapshot proven ours: same database (unless forced), intact, not
    edited since its purge recorded it, and in the snapshot register (unless the operator
    vouches for it: --untraced; a forced, foreign snapshot cannot be in this register)."""
    fp = fingerprint(conn)
    refuse_foreign(reader, fp, force)
    load_snapshot(conn, reader)
    refuse_if_edited(conn, uri, reader.actual_sha256)
    trace = trace_of(conn, reader, uri, allow_untraced=allow_untraced or force)
    plan = restore_plan(
        conn,
        describe_target(target),
        reader.actual_sha256,
        snapshot_created_at=reader.summary.get("createdAt"),
    )
    plan.details.extend(image_hosts(conn))
    return trace.mark(plan, str(fp))


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


@task(name="apply-media-restore", **TRANSIENT_RETRIES)
def apply_media_restore(
    target: str,
    uri: str,
    force: bool,
    approved_plan_hash: str,
    approval: Approval,
    started_at: datetime,
    allow_untraced: bool = False,
) -> dict[str, int]:
    flow_run_id = current_flow_run_id()
    settings = get_settings()
    with (
        open_snapshot(uri, MEDIA_FORMAT) as reader,
        transaction(engine_for(target), lock_timeout_s=settings.lock_timeout_s) as conn,
    ):
        done = applied_counts(conn, flow_run_id, "restore-product-media", approved_plan_hash)
        if done is not None:
            return done
        lock_media_tables(conn)
        plan = _traced_plan(conn, target, uri, reader, force, allow_untraced)
        refuse_if_plan_moved(
            plan, approved_plan_hash, "the database changed since the restore was planned"
        )
        applied = insert_snapshot_rows(conn, plan)
        require_as_planned(applied, plan, "Restore changed")
        write_audit(
            conn,
            flow_run_id=flow_run_id,
            flow_name="restore-product-media",
            target=describe_target(target),
            plan_hash=plan.plan_hash,
            approval=approval,
            counts={"planned": plan.counts, "applied": applied},
            snapshot_uri=uri,
            started_at=started_at,
        )
    return applied
