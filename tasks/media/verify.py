"""Verify a media snapshot: whole, taken from this database, unedited since its purge,
equal to the live rows and, on request, every file it names still in the bucket.

A purge verifies the snapshot it has just written against the view that wrote
it (``written=``): the file read back from the store must hold exactly the bytes
that view rendered (body sha256 and totals as the writer counted them), so the
plan derived in that view describes the file's rows; the apply then proves,
under its lock, that the live rows still hash to that plan. No re-rendering.

The audit-based edit check lives here too: the restore refuses a file that
fails it (``refuse_if_edited``) with the same reason the verify reports.
"""

from __future__ import annotations

from prefect import task
from sqlalchemy import Connection

from safeops.core.db import engine_for, fingerprint, read_snapshot
from safeops.core.errors import ForeignSnapshot, SnapshotInvalid
from safeops.core.models import Check, SnapshotRef, VerifyReport, describe_diffs
from safeops.core.settings import describe_target
from tasks.common.audit import recorded_for_snapshot
from tasks.common.retry import TRANSIENT_RETRIES
from tasks.common.snapshots import check_source, open_snapshot, read_back
from tasks.media.loaded import (
    clean_diffs,
    compare_with_live,
    load_snapshot,
    match_live,
    snapshot_image_urls,
)
from tasks.media.objects import head_missing
from tasks.media.plan import purge_plan
from tasks.media.snapshot import MEDIA_FORMAT


@task(name="verify-media-snapshot", **TRANSIENT_RETRIES)
def verify_media_snapshot(
    target: str,
    uri: str,
    *,
    require_live_match: bool = True,
    check_objects: bool = False,
    written: SnapshotRef | None = None,
) -> VerifyReport:
    """Integrity failures raise SnapshotInvalid at once; source, live-match and
    object checks are collected so the report can show all of them.

    ``written``: the SnapshotRef (with its plan) of the task that just wrote
    ``uri``; the file is then proven against that view instead of a re-rendering."""
    if written is not None and written.plan is not None and not check_objects:
        return _verify_against_its_view(target, uri, written)
    with open_snapshot(uri, MEDIA_FORMAT) as reader, read_snapshot(engine_for(target)) as conn:
        # Fast path: the body equals a fresh rendering of the live catalog, so
        # totals, ids and contents all hold without loading it. Anything else
        # (or an object check, which reads the loaded urls) loads it and names
        # the differences as before.
        matched = None
        if require_live_match and not check_objects:
            matched = match_live(conn, reader)
        if matched is None:
            with open_snapshot(uri, MEDIA_FORMAT) as again:
                totals = load_snapshot(conn, again)
            reader = again
        else:
            totals = matched
        checks = [
            Check(name="format", ok=True, detail=f"{MEDIA_FORMAT} v1"),
            Check(name="checksum", ok=True, detail=f"sha256 {reader.actual_sha256[:16]}…"),
            Check(name="totals", ok=True, detail=", ".join(f"{k}={v}" for k, v in totals.items())),
        ]
        problem = check_source(reader, fingerprint(conn))
        checks.append(
            Check(name="source", ok=problem is None, detail=problem or "taken from this database")
        )
        edited = edited_since_purge(conn, uri, reader.actual_sha256)
        checks.append(
            Check(
                name="audit",
                ok=edited is None,
                detail=edited or "agrees with every audit row naming it",
            )
        )
        # pydantic copies the list: later checks go to report.checks, not `checks`.
        report = VerifyReport(uri=uri, checks=checks, totals=totals, file_sha256=reader.file_sha256)
        if require_live_match:
            report.diffs = clean_diffs() if matched is not None else compare_with_live(conn)
            dirty = describe_diffs(report.diffs)
            report.checks.append(
                Check(
                    name="live-match",
                    ok=not dirty,
                    detail=dirty or "id sets equal the live database's",
                )
            )
            if not dirty:
                # In the view that proved file == live: what an apply re-derives under
                # its lock to know the rows are still these, without re-reading the file.
                report.plan_hash = purge_plan(
                    conn, describe_target(target), count_products=False
                ).plan_hash
        if check_objects:
            missing, first = head_missing(snapshot_image_urls(conn))
            report.missing_objects, report.first_missing_objects = missing, first
            report.checks.append(
                Check(
                    name="objects",
                    ok=missing == 0,
                    detail=f"{missing} object(s) missing"
                    + (f" ({', '.join(first)})" if first else ""),
                )
            )
    return report


def _verify_against_its_view(target: str, uri: str, written: SnapshotRef) -> VerifyReport:
    """Read the stored file back whole: it must be the bytes the snapshot's view rendered.

    The writer hashed every document as it wrote it and counted the rows; the
    file read back from the store must carry that body (its checksum, checked
    by the reader, then compared with the writer's) and those totals, and come
    from this database. Then the plan the snapshot derived in the same view
    is the plan of the file's rows: equal to the re-rendering's plan, without
    the re-rendering. (Live rows are proven equal to it by the apply, under its
    lock; a dry run reports the plan of the view the file holds.)"""
    assert written.plan is not None
    reader = read_back(uri, MEDIA_FORMAT, written)
    summary_totals = {k: reader.summary.get(k) for k in written.totals}
    if summary_totals != written.totals or reader.documents_read != written.totals.get(
        "totalProducts"
    ):
        raise SnapshotInvalid(
            f"Snapshot {uri} failed the totals check: the file holds {summary_totals} "
            f"({reader.documents_read} documents), the snapshot wrote {written.totals}"
        )
    checks = [
        Check(name="format", ok=True, detail=f"{MEDIA_FORMAT} v1"),
        Check(name="checksum", ok=True, detail=f"sha256 {reader.actual_sha256[:16]}…"),
        Check(
            name="totals",
            ok=True,
            detail=", ".join(f"{k}={v}" for k, v in written.totals.items()),
        ),
    ]
    with read_snapshot(engine_for(target)) as conn:
        problem = check_source(reader, fingerprint(conn))
        edited = edited_since_purge(conn, uri, reader.actual_sha256)
    checks += [
        Check(name="source", ok=problem is None, detail=problem or "taken from this database"),
        Check(
            name="audit",
            ok=edited is None,
            detail=edited or "agrees with every audit row naming it",
        ),
        Check(
            name="live-match",
            ok=True,
            detail="the bytes its consistent view rendered; plan "
            f"{written.plan.plan_hash[:16]}… of those rows (re-proven under the apply's lock)",
        ),
    ]
    return VerifyReport(
        uri=uri,
        checks=checks,
        totals=written.totals,
        file_sha256=reader.file_sha256,
        plan_hash=written.plan.plan_hash,
        diffs=clean_diffs(),
    )


def edited_since_purge(conn: Connection, uri: str, sha256: str) -> str | None:
    """Why the file is not the undo point a purge recorded (None when it is, or when no
    purge recorded it): its checksum is in the purge's audit row, committed with the purge."""
    recorded = {
        str(c["snapshotSha256"])
        for _, c in recorded_for_snapshot(conn, "purge-product-media", uri)
        if c.get("snapshotSha256")
    }
    if recorded and sha256 not in recorded:
        return (
            f"the purge that wrote it recorded sha256 {min(recorded)[:16]}…, the file "
            f"now hashes to {sha256[:16]}… (edited since)"
        )
    return None


def refuse_if_edited(conn: Connection, uri: str, sha256: str) -> None:
    problem = edited_since_purge(conn, uri, sha256)
    if problem:
        raise SnapshotInvalid(f"Snapshot {uri} failed the audit check: {problem}")


def refuse_unless_verified(report: VerifyReport, subject: str, outcome: str) -> None:
    """Raise, naming every failed check: a snapshot of another database is
    ``ForeignSnapshot`` (exit 3, ``--force`` territory), any other failure
    ``SnapshotInvalid``. ``outcome`` ends the message (e.g. "; nothing changed.")."""
    if report.ok:
        return
    failed = [c.name for c in report.checks if not c.ok]
    error = ForeignSnapshot if failed == ["source"] else SnapshotInvalid
    raise error(f"{subject} failed the {', '.join(failed)} check(s): {report.failures()}{outcome}")
