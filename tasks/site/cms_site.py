"""Prefect tasks over one CMS site's structure: check, snapshot, verify, reset, restore."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from prefect import task
from sqlalchemy import Connection

from safeops.core.db import engine_for, fingerprint, read_snapshot, transaction
from safeops.core.errors import (
    BadInput,
    ResetNotAllowed,
    RestoreConflict,
    SafeopsError,
    SnapshotInvalid,
)
from safeops.core.models import Approval, Check, Plan, SnapshotRef, VerifyReport, plan_hash_of
from safeops.core.settings import describe_target, get_settings
from tasks.common.audit import applied_counts, recorded_for_snapshot, write_audit
from tasks.common.guards import FileCheck, refuse_if_plan_moved
from tasks.common.retry import TRANSIENT_RETRIES
from tasks.common.run_id import current_flow_run_id as _flow_run_id
from tasks.common.snapshots import (
    finish_and_publish,
    new_writer,
    now_utc,
    open_snapshot,
    refuse_foreign,
    source_fields,
)
from tasks.site import cms_sql as sql

SNAPSHOT_PREFIX = "cms-site-structure-snapshot"


def parse_site_id(site_id: Any) -> str:
    """Only a canonical UUID reaches SQL; anything else is bad input (exit 2)."""
    raw = str(site_id).strip() if site_id is not None else ""
    if not raw or len(raw) > 64:
        raise BadInput(f"Invalid site_id {raw[:64]!r}: expected a UUID.")
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise BadInput(f"Invalid site_id {raw[:64]!r}: expected a UUID.") from None


def _require_site(conn: Connection, site_id: str, lock: bool = False) -> tuple[str, str]:
    row = sql.site_row(conn, site_id, lock=lock)
    if row is None:
        raise BadInput(f"Unknown site {site_id}: no such site in the CMS database.")
    return row


def eligibility(published: int) -> dict[str, Any]:
    if published:
        reason = (f"Reset impossible: {published} published post(s); only sites without "
                  "published content can be reset")
    else:
        reason = "Reset allowed: the site has 0 published posts"
    return {"canReset": published == 0, "publishedCount": published, "reason": reason}


@task(name="check-site-reset", **TRANSIENT_RETRIES)
def check_site(target: str, site_id: str) -> dict[str, Any]:
    with transaction(engine_for(target), read_only=True) as conn:
        slug, _ = _require_site(conn, site_id)
        return {**eligibility(sql.published_posts(conn, site_id)), "siteSlug": slug}


@task(name="snapshot-site-structure", **TRANSIENT_RETRIES)
def snapshot_site(target: str, site_id: str,
                  snapshot_location: str | None) -> tuple[SnapshotRef, Plan]:
    """Plan and snapshot in one REPEATABLE READ view, so the file holds exactly
    the rows the plan hash describes."""
    created = now_utc()
    writer = new_writer(sql.SITE_FORMAT, "rows", snapshot_location)
    try:
        with read_snapshot(engine_for(target)) as conn:
            slug, name = _require_site(conn, site_id)
            published = sql.published_posts(conn, site_id)
            if published:
                raise ResetNotAllowed(eligibility(published)["reason"])
            plan = sql.reset_plan(conn, site_id, describe_target(target))
            plan.notes.append(f"site {slug} ({site_id})")
            totals: dict[str, int] = {}
            for kind, doc in sql.stream_snapshot_docs(conn, site_id):
                writer.add(doc)
                totals[kind] = totals.get(kind, 0) + 1
            fp = fingerprint(conn)
        summary = {"siteId": site_id, "siteSlug": slug, "siteName": name,
                   "planHash": plan.plan_hash, "planDigest": sql.DIGEST_VERSION,
                   "totalRows": writer.count,
                   **{f"total_{k.name}": totals.get(k.name, 0) for k in sql.KINDS},
                   **source_fields(fp)}
        uri = finish_and_publish(writer, name_prefix=f"{SNAPSHOT_PREFIX}-{slug[:40]}",
                                 created_at=created, summary=summary,
                                 location=snapshot_location)
    except BaseException:
        writer.discard()
        raise
    return SnapshotRef(uri=uri, totals=totals, body_sha256=writer.sha256, source=str(fp)), plan


def _load_verified(conn: Connection, uri: str, reader: Any) -> tuple[str, dict[str, int]]:
    """Load a site snapshot and prove it against its own summary (hash and totals)."""
    loaded = sql.load_snapshot(conn, reader.documents(), uri)
    problems = [f"{k} is {reader.summary.get('total_' + k)!r} in the summary but the body holds "
                f"{v}" for k, v in loaded.items() if reader.summary.get("total_" + k) != v]
    if problems:
        raise SnapshotInvalid(f"Snapshot {uri} failed the totals check: " + "; ".join(problems))
    site_id = sql.snapshot_site_id(conn)
    if site_id != reader.summary.get("siteId"):
        raise SnapshotInvalid(f"Snapshot {uri} failed the totals check: its rows belong to site "
                              f"{site_id}, the summary says {reader.summary.get('siteId')}")
    version = reader.summary.get("planDigest", 1)
    if not isinstance(version, int):
        raise SnapshotInvalid(f"Snapshot {uri} failed the format check: planDigest "
                              f"{version!r} is not a version number")
    derived, _ = sql.snapshot_plan_hash(conn, site_id, version)
    if derived != reader.summary.get("planHash"):
        raise SnapshotInvalid(f"Snapshot {uri} failed the plan-hash check: its rows hash to "
                              f"{derived[:16]}…, the summary records "
                              f"{str(reader.summary.get('planHash'))[:16]}…")
    recorded = {h for h, _ in recorded_for_snapshot(conn, "reset-site-structure", uri)}
    if recorded and reader.summary.get("planHash") not in recorded:
        raise SnapshotInvalid(f"Snapshot {uri} failed the audit check: the reset that wrote it "
                              f"recorded plan {min(recorded)[:16]}…, the file now records "
                              f"{str(reader.summary.get('planHash'))[:16]}… (edited since)")
    return site_id, loaded


@task(name="verify-site-snapshot", **TRANSIENT_RETRIES)
def verify_site_snapshot(target: str, uri: str, expected_plan_hash: str | None) -> VerifyReport:
    with open_snapshot(uri, sql.SITE_FORMAT) as reader, \
            read_snapshot(engine_for(target)) as conn:
        refuse_foreign(reader, fingerprint(conn), force=False)
        _, loaded = _load_verified(conn, uri, reader)
        checks = [Check(name="format", ok=True, detail=sql.SITE_FORMAT),
                  Check(name="checksum", ok=True, detail=f"sha256 {reader.actual_sha256[:16]}…"),
                  Check(name="totals", ok=True,
                        detail=", ".join(f"{k}={v}" for k, v in loaded.items())),
                  Check(name="plan-hash", ok=True, detail="rows hash to the recorded plan")]
        if expected_plan_hash is not None and reader.summary.get("planHash") != expected_plan_hash:
            raise SnapshotInvalid(f"Snapshot {uri} failed the plan-hash check: it records "
                                  f"{reader.summary.get('planHash')}, the plan is "
                                  f"{expected_plan_hash}")
    return VerifyReport(uri=uri, checks=checks, totals=loaded, file_sha256=reader.file_sha256)


def _require_approved_snapshot(conn: Connection, uri: str, site_id: str,
                               approved_plan_hash: str) -> None:
    """The summary alone names what the undo point is for: its rows were proven against
    it by the verify, and FileCheck proves the file is still those verified bytes."""
    with open_snapshot(uri, sql.SITE_FORMAT) as reader:
        refuse_foreign(reader, fingerprint(conn), force=False)
        summary = reader.summary
    if summary.get("siteId") != site_id or summary.get("planHash") != approved_plan_hash:
        raise SnapshotInvalid(f"Snapshot {uri} failed the plan-hash check: it records site "
                              f"{summary.get('siteId')} and plan "
                              f"{str(summary.get('planHash'))[:16]}…, the approved reset is of "
                              f"site {site_id} with plan {approved_plan_hash[:16]}…; nothing "
                              "changed.")


def _reset_locked(conn: Connection, site_id: str, target: str, file_check: FileCheck,
                  approved_plan_hash: str) -> Plan:
    """Delete under the site's locks; the plan of what actually changed, proven approved."""
    _require_site(conn, site_id)
    sql.lock_site_for_reset(conn, site_id)
    published = sql.published_posts(conn, site_id)
    if published:
        raise ResetNotAllowed(eligibility(published)["reason"] + " (published since the "
                              "check; nothing changed)")
    kept = sql.KeptRowsGuard(conn, site_id)
    changed, effects = sql.lock_changed_rows(conn, site_id)
    file_check.require_unchanged()
    deleted = sql.delete_digested(conn, site_id)
    plan = sql.plan_of_parts(site_id, {**changed, **deleted}, effects, describe_target(target))
    refuse_if_plan_moved(plan, approved_plan_hash,
                         "the site's structure changed since it was approved")
    kept.require_only(sql.expected_writes(plan.counts))
    left = sql.leftovers(conn, site_id)
    if any(left.values()):
        raise SafeopsError(f"Reset left rows behind ({left}); rolled back, nothing changed.")
    return plan


@task(name="apply-site-reset", **TRANSIENT_RETRIES)
def apply_site_reset(target: str, site_id: str, snapshot_uri: str, approved_plan_hash: str,
                     verified_sha256: str, approval: Approval,
                     started_at: datetime) -> dict[str, int]:
    """One READ COMMITTED transaction that deletes exactly the approved rows or nothing.

    The undo point is not re-read into the database: ``verified_sha256`` is the
    hash of the whole file that verify_site_snapshot proved against its summary
    and the live rows before the approval, and FileCheck hashes the stored file
    again (in a thread, while the SQL runs) so that any edit since, summary or
    body, refuses before the first delete.

    The plan hash is not re-derived by a separate pass either: each DELETE
    returns the rows it removed and is digested the way the plan digests them, the
    few updated rows are digested under row locks, and the hash of those parts
    must be the approved one, or the transaction rolls back. So the hash binds the
    rows that really went, not a read that merely preceded them. Per-table write
    counts of this transaction then prove nothing else changed anywhere."""
    flow_run_id = _flow_run_id()
    file_check = FileCheck(snapshot_uri, verified_sha256)
    try:
        with transaction(engine_for(target),
                         lock_timeout_s=get_settings().lock_timeout_s) as conn:
            done = applied_counts(conn, flow_run_id, "reset-site-structure", approved_plan_hash)
            if done is not None:
                return done
            _require_approved_snapshot(conn, snapshot_uri, site_id, approved_plan_hash)
            plan = _reset_locked(conn, site_id, target, file_check, approved_plan_hash)
            # These counts are the statements' own, already bound by the approved hash:
            # comparing them with the plan (require_as_planned) would compare it with itself.
            deleted = {k: plan.counts[k] for k in sql.DELETED_KINDS}
            write_audit(conn, flow_run_id=flow_run_id, flow_name="reset-site-structure",
                        target=describe_target(target), plan_hash=plan.plan_hash,
                        approval=approval,
                        counts={"site_id": site_id, "planned": plan.counts, "deleted": deleted},
                        snapshot_uri=snapshot_uri, started_at=started_at)
    finally:
        file_check.cancel()
    return deleted


@task(name="verify-site-reset", **TRANSIENT_RETRIES)
def verify_site_reset(target: str, site_id: str) -> dict[str, int]:
    with transaction(engine_for(target), read_only=True) as conn:
        return sql.leftovers(conn, site_id)


def _restore_plan(conn: Connection, target: str, reader: Any, uri: str,
                  skip_conflicts: bool) -> tuple[str, Plan]:
    site_id, _ = _load_verified(conn, uri, reader)
    _require_site(conn, site_id)
    todo = sql.restore_todo(conn)
    conflicts = sql.restore_conflicts(conn)
    present = sql.restore_present(conn)
    n_conflicts = sum(conflicts.values())
    if n_conflicts and not skip_conflicts:
        raise RestoreConflict(
            "Refused: the site gained structure that conflicts with the snapshot ("
            + ", ".join(f"{k}={v}" for k, v in conflicts.items() if v)
            + "); remove it or pass skip_conflicts; nothing changed.")
    counts = {**todo, **{f"{k}_already_present": v for k, v in present.items()},
              **{f"{k}_conflicting": v for k, v in conflicts.items()}}
    notes = [f"{v} {k} skipped (conflict)" for k, v in conflicts.items() if v]
    return site_id, Plan(kind="restore-site-structure", target=describe_target(target),
                         counts=counts, notes=notes,
                         plan_hash=plan_hash_of({"restore-site-structure": counts,
                                                 "snapshot": reader.actual_sha256}))


@task(name="plan-site-restore", **TRANSIENT_RETRIES)
def plan_site_restore(target: str, uri: str, skip_conflicts: bool) -> tuple[str, str, Plan]:
    with open_snapshot(uri, sql.SITE_FORMAT) as reader, \
            read_snapshot(engine_for(target)) as conn:
        refuse_foreign(reader, fingerprint(conn), force=False)
        site_id, plan = _restore_plan(conn, target, reader, uri, skip_conflicts)
        return site_id, str(reader.summary.get("siteSlug")), plan


@task(name="apply-site-restore", **TRANSIENT_RETRIES)
def apply_site_restore(target: str, uri: str, skip_conflicts: bool, approved_plan_hash: str,
                       approval: Approval, started_at: datetime) -> dict[str, int]:
    flow_run_id = _flow_run_id()
    with open_snapshot(uri, sql.SITE_FORMAT) as reader, \
            transaction(engine_for(target), lock_timeout_s=get_settings().lock_timeout_s) as conn:
        done = applied_counts(conn, flow_run_id, "restore-site-structure", approved_plan_hash)
        if done is not None:
            return done
        refuse_foreign(reader, fingerprint(conn), force=False)
        site_id = str(reader.summary.get("siteId"))
        _require_site(conn, parse_site_id(site_id), lock=True)
        _, plan = _restore_plan(conn, target, reader, uri, skip_conflicts)
        refuse_if_plan_moved(plan, approved_plan_hash,
                             "the site changed since the restore was planned")
        restored = sql.insert_structure(conn, site_id)
        write_audit(conn, flow_run_id=flow_run_id, flow_name="restore-site-structure",
                    target=describe_target(target), plan_hash=plan.plan_hash, approval=approval,
                    counts={"site_id": site_id, "planned": plan.counts, "restored": restored},
                    snapshot_uri=uri, started_at=started_at)
    return restored
