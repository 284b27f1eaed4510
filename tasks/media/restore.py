"""Restore product media from a snapshot: the plan people approve, and the apply that inserts it.

The snapshot is loaded into temp tables (``loaded``) once per transaction, and a
restore has at most two: ``plan-media-restore`` (a dry run, or the plan a person
approves during the pause) reads it in one short REPEATABLE READ transaction that
is always rolled back; ``apply-media-restore`` loads it again, takes the purge's
lock (``lock_media_tables``), re-derives the plan from the loaded rows
(``restore_plan``: the same file, proven by its checksum as it loads) and refuses
unless it is the approved one, inserts exactly the new rows as Medusa would hold
them now, never clobbering a thumbnail set since, counts what is left
(``left_to_restore``: the check afterwards) and writes the audit row, all in one
transaction. A live run with a saved plan has no pause, so it has only the
apply's transaction: one load of the file in all. A file edited after the purge
that wrote it is refused (``verify.refuse_if_edited``), and so is one the
snapshot register cannot trace (``register.trace_of``) unless the operator vouches
for it.
"""

from __future__ import annotations

from datetime import datetime

from prefect import task
from pydantic import BaseModel, Field
from sqlalchemy import Connection, text

from safeops.core import events
from safeops.core.db import engine_for, fingerprint, read_snapshot, transaction
from safeops.core.errors import SafeopsError
from safeops.core.models import Approval, Plan
from safeops.core.settings import describe_target, get_settings
from safeops.core.snapshot_reader import SnapshotReader
from tasks.common.approval import check_saved_plan
from tasks.common.audit import recorded_apply, write_audit
from tasks.common.guards import refuse_if_plan_moved, require_as_planned
from tasks.common.register import trace_of
from tasks.common.retry import TRANSIENT_RETRIES
from tasks.common.run_id import current_flow_run_id
from tasks.common.snapshots import open_snapshot, refuse_foreign
from tasks.media.loaded import load_snapshot
from tasks.media.purge import lock_media_tables
from tasks.media.restore_plan import TODO, image_hosts, left_to_restore, restore_plan
from tasks.media.snapshot import MEDIA_FORMAT
from tasks.media.verify import refuse_if_edited

FLOW = "restore-product-media"


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


# ---------------------------------------------------------------- the plan of a loaded file


def _plan_loaded(
    conn: Connection,
    target: str,
    uri: str,
    reader: SnapshotReader,
    force: bool,
    allow_untraced: bool,
    *,
    hosts: bool = True,
) -> Plan:
    """The plan of a snapshot proven ours. ``load_snapshot`` proved it intact (checksum,
    format, totals) as it loaded it, first, so a damaged file is reported as such before
    any other refusal (what the separate verify step used to do); here: same database
    (unless forced), not edited since its purge recorded it, and in the snapshot
    register (unless the operator vouches for it: --untraced; a forced, foreign
    snapshot cannot be in this register). ``hosts``: also list where the restored
    images will point, for a plan a person reads (details, not hashed)."""
    fp = fingerprint(conn)
    refuse_foreign(reader, fp, force)
    refuse_if_edited(conn, uri, reader.actual_sha256)
    trace = trace_of(conn, reader, uri, allow_untraced=allow_untraced or force)
    plan = restore_plan(
        conn,
        describe_target(target),
        reader.actual_sha256,
        snapshot_created_at=reader.summary.get("createdAt"),
    )
    if hosts:
        plan.details.extend(image_hosts(conn))
    return trace.mark(plan, str(fp))


# ---------------------------------------------------------------- tasks


@task(name="plan-media-restore", **TRANSIENT_RETRIES)
def plan_media_restore(target: str, uri: str, force: bool, allow_untraced: bool = False) -> Plan:
    """What a restore would do, in one read-only view that is always rolled back: a dry
    run changes nothing, and a live run shows this plan for approval."""
    with open_snapshot(uri, MEDIA_FORMAT) as reader, read_snapshot(engine_for(target)) as conn:
        load_snapshot(conn, reader)
        return _plan_loaded(conn, target, uri, reader, force, allow_untraced)


class RestoreApplied(BaseModel):
    """What an apply did: the plan it derived under its lock, the rows it changed (empty
    when the plan had nothing to do, and then nothing was written), what the check
    afterwards found left, and the snapshot's totals."""

    plan: Plan
    applied: dict[str, int] = Field(default_factory=dict)
    left: dict[str, int] = Field(default_factory=dict)
    totals: dict[str, int] = Field(default_factory=dict)


class _NothingToRestore(Exception):
    """Leaves the apply's transaction by rolling it back: nothing to do, nothing written."""

    def __init__(self, plan: Plan) -> None:
        super().__init__("nothing to restore")
        self.plan = plan


@task(name="apply-media-restore", **TRANSIENT_RETRIES)
def apply_media_restore(
    target: str,
    uri: str,
    force: bool,
    approved_plan_hash: str,
    approval: Approval,
    started_at: datetime,
    allow_untraced: bool = False,
    *,
    saved_plan: bool = False,
) -> RestoreApplied:
    """Load, lock, re-plan, refuse any drift, insert, check, audit: one transaction.

    ``saved_plan``: the approval is a saved plan hash given before any plan was shown,
    so this transaction is the run's only plan: it is announced (the CLI prints it)
    and a different hash is refused as a plan mismatch, as the flow's plan step would
    have; otherwise the hash was approved after a plan step, and a difference is
    drift. Either way nothing changed. A plan with nothing to do rolls back, so it
    leaves no audit row (and no audit table) behind.

    The file is loaded before the lock is taken: loading reads no live row, and the
    storefront's writers wait for the lock only while the plan is re-derived and the
    rows go in."""
    flow_run_id = current_flow_run_id()
    target_text = describe_target(target)
    try:
        with (
            open_snapshot(uri, MEDIA_FORMAT) as reader,
            transaction(engine_for(target), lock_timeout_s=get_settings().lock_timeout_s) as conn,
        ):
            done = recorded_apply(conn, flow_run_id, FLOW, approved_plan_hash.strip())
            if done is not None:  # a retry whose first attempt committed (lost ack)
                return _from_audit(done, target_text, approved_plan_hash.strip())
            totals = load_snapshot(conn, reader)  # reads no live row: before the lock
            lock_media_tables(conn)
            # Where the images will point is for a person reading a plan: the plan step's.
            plan = _plan_loaded(conn, target, uri, reader, force, allow_untraced, hosts=False)
            _require_approved(plan, approved_plan_hash, saved_plan=saved_plan)
            if not any(plan.counts[k] for k in TODO):
                raise _NothingToRestore(plan)
            applied = insert_snapshot_rows(conn, plan)
            require_as_planned(applied, plan, "Restore changed")
            left = left_to_restore(conn)
            if any(left.values()):
                raise SafeopsError(
                    f"Restore would leave rows missing ({left}); rolled back, nothing changed."
                )
            write_audit(
                conn,
                flow_run_id=flow_run_id,
                flow_name=FLOW,
                target=target_text,
                plan_hash=plan.plan_hash,
                approval=approval,
                counts={"planned": plan.counts, "applied": applied},
                snapshot_uri=uri,
                started_at=started_at,
            )
    except _NothingToRestore as nothing:
        return RestoreApplied(plan=nothing.plan, left=dict.fromkeys(TODO, 0))
    return RestoreApplied(plan=plan, applied=applied, left=left, totals=totals)


def _require_approved(plan: Plan, approved_plan_hash: str, *, saved_plan: bool) -> None:
    if saved_plan:
        events.emit("plan", plan=plan)
        check_saved_plan(plan, approved_plan_hash)
    else:
        refuse_if_plan_moved(
            plan, approved_plan_hash, "the database changed since the restore was planned"
        )


def _from_audit(record: dict[str, object], target: str, plan_hash: str) -> RestoreApplied:
    """The outcome of this run's own committed apply, from its audit row."""
    planned = record.get("planned")
    applied = record.get("applied")
    counts = {str(k): int(v) for k, v in planned.items()} if isinstance(planned, dict) else {}
    return RestoreApplied(
        plan=Plan(kind=FLOW, target=target, counts=counts, plan_hash=plan_hash),
        applied={str(k): int(v) for k, v in applied.items()} if isinstance(applied, dict) else {},
        left=dict.fromkeys(TODO, 0),
    )
