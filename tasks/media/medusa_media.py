"""Prefect tasks over Medusa's product media: snapshot, verify, plan, purge, restore.

Each task opens its own connection and transaction, so a retry after a
dropped connection starts clean; refusals are never retried.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from prefect import task
from prefect.context import FlowRunContext

from safeops.core.db import engine_for, fingerprint, read_snapshot, transaction
from safeops.core.errors import DriftDetected, SnapshotInvalid
from safeops.core.models import Approval, Check, Plan, SnapshotRef, VerifyReport, describe_diffs
from safeops.core.settings import describe_target, get_settings
from tasks.common.artifacts import Progress
from tasks.common.audit import applied_counts, recorded_for_snapshot, write_audit
from tasks.common.guards import FileCheck, refuse_if_plan_moved, require_as_planned
from tasks.common.retry import TRANSIENT_RETRIES
from tasks.common.snapshots import (
    check_source,
    finish_and_publish,
    new_writer,
    now_utc,
    open_snapshot,
    refuse_foreign,
    source_fields,
)
from tasks.media import medusa_sql as sql
from tasks.media.objects import head_missing

SNAPSHOT_PREFIX = "medusa-media-snapshot"


def _flow_run_id() -> UUID | None:
    ctx = FlowRunContext.get()
    return ctx.flow_run.id if ctx and ctx.flow_run else None


@task(name="snapshot-media", **TRANSIENT_RETRIES)
def take_media_snapshot(target: str, snapshot_location: str | None = None) -> SnapshotRef:
    """Stream every product holding a reference to a new snapshot file."""
    created = now_utc()
    writer = new_writer(sql.MEDIA_FORMAT, "products", snapshot_location)
    try:
        with read_snapshot(engine_for(target)) as conn:
            fp = fingerprint(conn)
            progress = Progress("media-snapshot-progress", sql.estimate_products(conn),
                                "products written to the snapshot")
            totals = sql.stream_snapshot(conn, writer, progress.update)
            progress.finish(totals["totalProducts"])
        uri = finish_and_publish(writer, name_prefix=SNAPSHOT_PREFIX, created_at=created,
                                 summary={**totals, **source_fields(fp)},
                                 location=snapshot_location)
    except BaseException:
        writer.discard()
        raise
    return SnapshotRef(uri=uri, totals=totals, body_sha256=writer.sha256, source=str(fp))


@task(name="verify-media-snapshot", **TRANSIENT_RETRIES)
def verify_media_snapshot(target: str, uri: str, *, require_live_match: bool = True,
                          check_objects: bool = False) -> VerifyReport:
    """Integrity failures raise SnapshotInvalid at once; source, live-match and
    object checks are collected so the report can show all of them."""
    with open_snapshot(uri, sql.MEDIA_FORMAT) as reader, \
            read_snapshot(engine_for(target)) as conn:
        # Fast path: the body equals a fresh rendering of the live catalog, so
        # totals, ids and contents all hold without loading it. Anything else
        # (or an object check, which reads the loaded urls) loads it and names
        # the differences as before.
        matched = None
        if require_live_match and not check_objects:
            matched = sql.match_live(conn, reader)
        if matched is None:
            with open_snapshot(uri, sql.MEDIA_FORMAT) as again:
                totals = sql.load_snapshot(conn, again)
            reader = again
        else:
            totals = matched
        checks = [Check(name="format", ok=True, detail=f"{sql.MEDIA_FORMAT} v1"),
                  Check(name="checksum", ok=True, detail=f"sha256 {reader.actual_sha256[:16]}…"),
                  Check(name="totals", ok=True,
                        detail=", ".join(f"{k}={v}" for k, v in totals.items()))]
        problem = check_source(reader, fingerprint(conn))
        checks.append(Check(name="source", ok=problem is None,
                            detail=problem or "taken from this database"))
        edited = _edited_since_purge(conn, uri, reader.actual_sha256)
        checks.append(Check(name="audit", ok=edited is None,
                            detail=edited or "agrees with every audit row naming it"))
        # pydantic copies the list: later checks go to report.checks, not `checks`.
        report = VerifyReport(uri=uri, checks=checks, totals=totals,
                              file_sha256=reader.file_sha256)
        if require_live_match:
            report.diffs = sql.clean_diffs() if matched is not None else sql.compare_with_live(conn)
            dirty = describe_diffs(report.diffs)
            report.checks.append(Check(name="live-match", ok=not dirty,
                                       detail=dirty or "id sets equal the live database's"))
            if not dirty:
                # In the view that proved file == live: what an apply re-derives under
                # its lock to know the rows are still these, without re-reading the file.
                report.plan_hash = sql.purge_plan(conn, describe_target(target),
                                                  count_products=False).plan_hash
        if check_objects:
            missing, first = head_missing(sql.snapshot_image_urls(conn))
            report.missing_objects, report.first_missing_objects = missing, first
            report.checks.append(Check(name="objects", ok=missing == 0,
                                       detail=f"{missing} object(s) missing"
                                       + (f" ({', '.join(first)})" if first else "")))
    return report


@task(name="plan-media-purge", **TRANSIENT_RETRIES)
def plan_media_purge(target: str) -> Plan:
    with read_snapshot(engine_for(target)) as conn:
        return sql.purge_plan(conn, describe_target(target))


def _ensure_equal(conn: object, uri: str) -> None:
    diffs = sql.compare_with_live(conn)  # type: ignore[arg-type]
    dirty = describe_diffs(diffs)
    if dirty:
        raise DriftDetected(f"Refused: drift since snapshot {uri}: {dirty}; nothing changed.")


@task(name="apply-media-purge", **TRANSIENT_RETRIES)
def apply_media_purge(target: str, snapshot_uri: str, approved_plan_hash: str,
                      approval: Approval, started_at: datetime, verified_sha256: str = "",
                      verified_plan_hash: str = "") -> dict[str, int]:
    """One transaction: lock, prove snapshot == live == approved plan, delete, audit.

    Two proofs reach the same conclusion. Fast, when a verify of this run proved
    the file equal to the live rows and recorded their plan hash: the file still
    hashes to the bytes that verify read (hashed in a thread meanwhile), and the
    plan re-derived under the lock, a digest of every row, still equals the
    verified one; so the rows are those the file holds, at the cost of one pass
    of digests instead of re-rendering the catalog. Thorough, otherwise (no
    verify to lean on, or the rows moved since): compare the file with the live
    rows under the lock, and name any drift."""
    flow_run_id = _flow_run_id()
    settings = get_settings()
    file_check = (FileCheck(snapshot_uri, verified_sha256)
                  if verified_sha256 and verified_plan_hash else None)
    try:
        with open_snapshot(snapshot_uri, sql.MEDIA_FORMAT) as reader, \
                transaction(engine_for(target), lock_timeout_s=settings.lock_timeout_s) as conn:
            done = applied_counts(conn, flow_run_id, "purge-product-media", approved_plan_hash)
            if done is not None:
                return done  # this run committed before its connection dropped
            sql.lock_media_tables(conn)
            refuse_foreign(reader, fingerprint(conn), force=False)
            plan = sql.purge_plan(conn, describe_target(target), count_products=False)
            if file_check is not None and plan.plan_hash == verified_plan_hash:
                file_check.require_unchanged()
                matched, body_sha256 = True, str(reader.summary["bodySha256"])
                proof = "verified file + row digest"
            else:
                matched = sql.match_live(conn, reader) is not None
                if not matched:
                    with open_snapshot(snapshot_uri, sql.MEDIA_FORMAT) as again:
                        sql.load_snapshot(conn, again)
                    _ensure_equal(conn, snapshot_uri)
                body_sha256, proof = reader.actual_sha256, "file compared with the live rows"
            sql.require_snapshot_holds(plan, reader.summary, snapshot_uri)
            refuse_if_plan_moved(plan, approved_plan_hash, "the plan changed since approval")
            applied = sql.delete_matched_rows(conn) if matched else sql.delete_snapshot_rows(conn)
            require_as_planned(applied, plan, "Purge changed")
            write_audit(conn, flow_run_id=flow_run_id, flow_name="purge-product-media",
                        target=describe_target(target), plan_hash=plan.plan_hash,
                        approval=approval,
                        counts={"planned": plan.counts, "applied": applied,
                                "snapshotSha256": body_sha256, "proof": proof},
                        snapshot_uri=snapshot_uri, started_at=started_at)
    finally:
        if file_check is not None:
            file_check.cancel()
    return applied


def _edited_since_purge(conn: object, uri: str, sha256: str) -> str | None:
    """Why the file is not the undo point a purge recorded (None when it is, or when no
    purge recorded it): its checksum is in the purge's audit row, committed with the purge."""
    recorded = {str(c["snapshotSha256"]) for _, c in recorded_for_snapshot(
        conn, "purge-product-media", uri) if c.get("snapshotSha256")}  # type: ignore[arg-type]
    if recorded and sha256 not in recorded:
        return (f"the purge that wrote it recorded sha256 {min(recorded)[:16]}…, the file "
                f"now hashes to {sha256[:16]}… (edited since)")
    return None


def _refuse_if_edited(conn: object, uri: str, sha256: str) -> None:
    problem = _edited_since_purge(conn, uri, sha256)
    if problem:
        raise SnapshotInvalid(f"Snapshot {uri} failed the audit check: {problem}")


@task(name="plan-media-restore", **TRANSIENT_RETRIES)
def plan_media_restore(target: str, uri: str, force: bool) -> Plan:
    with open_snapshot(uri, sql.MEDIA_FORMAT) as reader, \
            read_snapshot(engine_for(target)) as conn:
        refuse_foreign(reader, fingerprint(conn), force)
        sql.load_snapshot(conn, reader)
        _refuse_if_edited(conn, uri, reader.actual_sha256)
        return sql.restore_plan(conn, describe_target(target), reader.actual_sha256)


@task(name="apply-media-restore", **TRANSIENT_RETRIES)
def apply_media_restore(target: str, uri: str, force: bool, approved_plan_hash: str,
                        approval: Approval, started_at: datetime) -> dict[str, int]:
    flow_run_id = _flow_run_id()
    settings = get_settings()
    with open_snapshot(uri, sql.MEDIA_FORMAT) as reader, \
            transaction(engine_for(target), lock_timeout_s=settings.lock_timeout_s) as conn:
        done = applied_counts(conn, flow_run_id, "restore-product-media", approved_plan_hash)
        if done is not None:
            return done
        sql.lock_media_tables(conn)
        refuse_foreign(reader, fingerprint(conn), force)
        sql.load_snapshot(conn, reader)
        _refuse_if_edited(conn, uri, reader.actual_sha256)
        plan = sql.restore_plan(conn, describe_target(target), reader.actual_sha256)
        refuse_if_plan_moved(plan, approved_plan_hash,
                             "the database changed since the restore was planned")
        applied = sql.insert_snapshot_rows(conn, plan)
        require_as_planned(applied, plan, "Restore changed")
        write_audit(conn, flow_run_id=flow_run_id, flow_name="restore-product-media",
                    target=describe_target(target), plan_hash=plan.plan_hash, approval=approval,
                    counts={"planned": plan.counts, "applied": applied}, snapshot_uri=uri,
                    started_at=started_at)
    return applied
