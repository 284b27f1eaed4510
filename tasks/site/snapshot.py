"""The site snapshot: what a reset will remove or change, streamed to the snapshot
store in the same read as the plan, and loaded back into temp tables to be proven
against its own summary (totals, site, plan hash, audit) before anything relies on it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prefect import task
from sqlalchemy import Connection, text

from safeops.core.db import engine_for, fingerprint, read_snapshot
from safeops.core.errors import ResetNotAllowed, SnapshotInvalid
from safeops.core.models import Check, Plan, SnapshotRef, VerifyReport
from safeops.core.settings import describe_target
from tasks.common.audit import recorded_for_snapshot
from tasks.common.register import record_snapshot, target_is_read_only
from tasks.common.retry import TRANSIENT_RETRIES
from tasks.common.snapshots import (
    finish_and_publish,
    new_writer,
    now_utc,
    open_snapshot,
    refuse_foreign,
    source_fields,
)
from tasks.site.check import eligibility, published_posts, require_site
from tasks.site.structure import (
    DIGEST_VERSION,
    KINDS,
    SNAPSHOT,
    plan_from,
    reset_plan,
    tune_for_site,
)

SITE_FORMAT = "safeops/cms-site-structure-snapshot"
SNAPSHOT_PREFIX = "cms-site-structure-snapshot"


def stream_snapshot_docs(conn: Connection, site_id: str) -> Iterator[tuple[str, str]]:
    """(kind, one-line JSON document) for every row the reset removes or changes."""
    tune_for_site(conn)
    for kind in KINDS:
        statement = text(
            f"SELECT json_build_object('kind', '{kind.name}', 'row', {kind.row_expr()})::text "
            f"FROM {kind.table} t WHERE {kind.where} ORDER BY {kind.key}"
        )
        result = conn.execute(
            statement.execution_options(stream_results=True, yield_per=1000), {"site": site_id}
        )
        for (doc,) in result:
            yield kind.name, doc


def load_snapshot(conn: Connection, documents: Iterator[bytes], uri: str) -> dict[str, int]:
    """Copy the documents into temp tables shaped like the live tables."""
    tune_for_site(conn)
    conn.execute(text("CREATE TEMP TABLE _snap_doc (doc text NOT NULL) ON COMMIT DROP"))
    raw = conn.connection.driver_connection
    with raw.cursor() as cur, cur.copy("COPY _snap_doc (doc) FROM STDIN") as copy:  # type: ignore[union-attr]
        for doc in documents:
            copy.write_row((doc.decode("utf-8", errors="replace"),))
    try:
        with conn.begin_nested():
            # Each document is parsed once, into jsonb (OFFSET 0 keeps the cast
            # from being inlined into both extractions, which would parse twice).
            conn.execute(
                text(
                    "CREATE TEMP TABLE _snap_json ON COMMIT DROP AS "
                    "SELECT j->>'kind' AS kind, j->'row' AS row "
                    "FROM (SELECT doc::jsonb AS j FROM _snap_doc OFFSET 0) d"
                )
            )
            for kind in KINDS:
                cols = ", ".join(f"r.{c}" for c in kind.columns) if kind.columns else "r.*"
                conn.execute(
                    text(
                        f"CREATE TEMP TABLE {kind.temp} ON COMMIT DROP AS SELECT {cols} "
                        f"FROM _snap_json j, jsonb_populate_record(NULL::{kind.table}, j.row) r "
                        f"WHERE j.kind = '{kind.name}'"
                    )
                )
            unknown = conn.execute(
                text("SELECT count(*) FROM _snap_json WHERE kind <> ALL(:kinds)"),
                {"kinds": [k.name for k in KINDS]},
            ).scalar_one()
    except Exception as exc:
        raise SnapshotInvalid(
            f"Snapshot {uri} failed the format check: its documents do not "
            f"fit the CMS tables ({str(exc).splitlines()[0]})"
        ) from None
    if unknown:
        raise SnapshotInvalid(
            f"Snapshot {uri} failed the format check: {unknown} document(s) of unknown kind"
        )
    return {
        k.name: int(conn.execute(text(f"SELECT count(*) FROM {k.temp}")).scalar_one())
        for k in KINDS
    }


def snapshot_site_id(conn: Connection) -> str:
    row = conn.execute(text("SELECT id::text FROM _snap_site_state")).all()
    if len(row) != 1:
        raise SnapshotInvalid("The snapshot does not name exactly one site.")
    return str(row[0][0])


def snapshot_plan_hash(
    conn: Connection, site_id: str, version: int = DIGEST_VERSION
) -> tuple[str, dict[str, int]]:
    """The plan hash recomputed from a loaded snapshot (must equal the recorded one),
    with the digest version the snapshot was written with."""
    plan = plan_from(conn, site_id, SNAPSHOT, "", version)
    return plan.plan_hash, plan.counts


@task(name="snapshot-site-structure", **TRANSIENT_RETRIES)
def snapshot_site(
    target: str, site_id: str, snapshot_location: str | None
) -> tuple[SnapshotRef, Plan]:
    """Plan and snapshot in one REPEATABLE READ view, so the file holds exactly
    the rows the plan hash describes."""
    created = now_utc()
    writer = new_writer(SITE_FORMAT, "rows", snapshot_location)
    try:
        with read_snapshot(engine_for(target)) as conn:
            slug, name = require_site(conn, site_id)
            published = published_posts(conn, site_id)
            if published:
                raise ResetNotAllowed(eligibility(published)["reason"])
            plan = reset_plan(conn, site_id, describe_target(target))
            plan.notes.append(f"site {slug} ({site_id})")
            totals: dict[str, int] = {}
            for kind, doc in stream_snapshot_docs(conn, site_id):
                writer.add(doc)
                totals[kind] = totals.get(kind, 0) + 1
            fp = fingerprint(conn)
            read_only = target_is_read_only(conn)
        summary = {
            "siteId": site_id,
            "siteSlug": slug,
            "siteName": name,
            "planHash": plan.plan_hash,
            "planDigest": DIGEST_VERSION,
            "totalRows": writer.count,
            **{f"total_{k.name}": totals.get(k.name, 0) for k in KINDS},
            **source_fields(fp, read_only),
        }
        uri = finish_and_publish(
            writer,
            name_prefix=f"{SNAPSHOT_PREFIX}-{slug[:40]}",
            created_at=created,
            summary=summary,
            location=snapshot_location,
        )
        record_snapshot(
            engine_for(target),
            kind=SITE_FORMAT,
            uri=uri,
            writer=writer,
            totals=totals,
            created_at=created,
            read_only=read_only,
        )
    except BaseException:
        writer.discard()
        raise
    return SnapshotRef(uri=uri, totals=totals, body_sha256=writer.sha256, source=str(fp)), plan


def load_verified(conn: Connection, uri: str, reader: Any) -> tuple[str, dict[str, int]]:
    """Load a site snapshot and prove it against its own summary (hash and totals)."""
    loaded = load_snapshot(conn, reader.documents(), uri)
    problems = [
        f"{k} is {reader.summary.get('total_' + k)!r} in the summary but the body holds {v}"
        for k, v in loaded.items()
        if reader.summary.get("total_" + k) != v
    ]
    if problems:
        raise SnapshotInvalid(f"Snapshot {uri} failed the totals check: " + "; ".join(problems))
    site_id = snapshot_site_id(conn)
    if site_id != reader.summary.get("siteId"):
        raise SnapshotInvalid(
            f"Snapshot {uri} failed the totals check: its rows belong to site "
            f"{site_id}, the summary says {reader.summary.get('siteId')}"
        )
    version = reader.summary.get("planDigest", 1)
    if not isinstance(version, int):
        raise SnapshotInvalid(
            f"Snapshot {uri} failed the format check: planDigest "
            f"{version!r} is not a version number"
        )
    derived, _ = snapshot_plan_hash(conn, site_id, version)
    if derived != reader.summary.get("planHash"):
        raise SnapshotInvalid(
            f"Snapshot {uri} failed the plan-hash check: its rows hash to "
            f"{derived[:16]}…, the summary records "
            f"{str(reader.summary.get('planHash'))[:16]}…"
        )
    recorded = {h for h, _ in recorded_for_snapshot(conn, "reset-site-structure", uri)}
    if recorded and reader.summary.get("planHash") not in recorded:
        raise SnapshotInvalid(
            f"Snapshot {uri} failed the audit check: the reset that wrote it "
            f"recorded plan {min(recorded)[:16]}…, the file now records "
            f"{str(reader.summary.get('planHash'))[:16]}… (edited since)"
        )
    return site_id, loaded


@task(name="verify-site-snapshot", **TRANSIENT_RETRIES)
def verify_site_snapshot(target: str, uri: str, expected_plan_hash: str | None) -> VerifyReport:
    with open_snapshot(uri, SITE_FORMAT) as reader, read_snapshot(engine_for(target)) as conn:
        refuse_foreign(reader, fingerprint(conn), force=False)
        _, loaded = load_verified(conn, uri, reader)
        checks = [
            Check(name="format", ok=True, detail=SITE_FORMAT),
            Check(name="checksum", ok=True, detail=f"sha256 {reader.actual_sha256[:16]}…"),
            Check(name="totals", ok=True, detail=", ".join(f"{k}={v}" for k, v in loaded.items())),
            Check(name="plan-hash", ok=True, detail="rows hash to the recorded plan"),
        ]
        if expected_plan_hash is not None and reader.summary.get("planHash") != expected_plan_hash:
            raise SnapshotInvalid(
                f"Snapshot {uri} failed the plan-hash check: it records "
                f"{reader.summary.get('planHash')}, the plan is "
                f"{expected_plan_hash}"
            )
    return VerifyReport(uri=uri, checks=checks, totals=loaded, file_sha256=reader.file_sha256)
