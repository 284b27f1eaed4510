"""The audit row every apply writes in the same transaction as its change."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from importlib.resources import files
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, text

from safeops.core.dsn import parsed_for
from safeops.core.models import Approval

AUDIT_DDL = files("safeops.schemas").joinpath("audit.sql").read_text()


# Databases (masked connection description) this process has seen with the audit table
# already committed.
_HAS_AUDIT_TABLE: set[str] = set()
# Set on a connection whose transaction ran the CREATE: it sees its own table before it
# commits, so what it sees is not remembered (the apply may still roll back).
_CREATED_HERE = "safeops_audit_created"


def ensure_audit_table(conn: Connection) -> None:
    """Idempotent and cheap on every write but a database's first.

    Double-checked: a plain ``to_regclass`` first (no lock, one round trip), and
    only when the table is missing the advisory lock, the check again, the
    CREATE. A database is remembered only once the table was seen by a
    connection that did not create it, so a CREATE rolled back with its apply
    is never remembered; a table dropped later by hand fails the next write in
    this process (rolled back with it, nothing half done) rather than being
    checked on every write."""
    dsn = parsed_for(conn.engine)
    database = dsn.target.masked() if dsn is not None else None  # unknown: never remembered
    if database is not None and database in _HAS_AUDIT_TABLE:
        return
    if _audit_table_exists(conn):
        if database is not None and not conn.info.get(_CREATED_HERE):
            _HAS_AUDIT_TABLE.add(database)
        return
    # The advisory lock stops two first runs racing on CREATE.
    conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('safeops:audit-ddl'))"))
    if not _audit_table_exists(conn):
        conn.info[_CREATED_HERE] = True
        conn.connection.driver_connection.execute(AUDIT_DDL)  # type: ignore[union-attr]


def _audit_table_exists(conn: Connection) -> bool:
    """Both of safeops' own tables (audit rows, snapshot register), the audit table with
    its latest column (``signatures``): the DDL creates each idempotently and brings an
    older audit table up to date with its ALTER, under the same lock."""
    return bool(
        conn.execute(
            text("""
        SELECT to_regclass('safeops.safeops_snapshots') IS NOT NULL
           AND EXISTS (SELECT 1 FROM pg_attribute
                       WHERE attrelid = to_regclass('safeops.safeops_audit')
                         AND attname = 'signatures' AND NOT attisdropped)""")
        ).scalar_one()
    )


def write_audit(
    conn: Connection,
    *,
    flow_run_id: UUID | None,
    flow_name: str,
    target: str,
    plan_hash: str,
    approval: Approval,
    counts: dict[str, Any],
    snapshot_uri: str | None,
    started_at: datetime | None,
) -> int:
    ensure_audit_table(conn)
    return int(
        conn.execute(
            text("""
        INSERT INTO safeops.safeops_audit
            (flow_run_id, flow_name, target, plan_hash, approver, reason, approved_via,
             counts, snapshot_uri, started_at, identity, signatures)
        VALUES (:run, :flow, :target, :hash, :approver, :reason, :via,
                CAST(:counts AS jsonb), :uri, :started, :identity, CAST(:signatures AS jsonb))
        RETURNING id"""),
            {
                "run": flow_run_id,
                "flow": flow_name,
                "target": target,
                "hash": plan_hash,
                "approver": approval.approver,
                "reason": approval.reason,
                "via": approval.via,
                "counts": json.dumps(counts),
                "uri": snapshot_uri,
                "started": started_at,
                "identity": approval.identity,
                "signatures": json.dumps([v.model_dump() for v in approval.signatures]),
            },
        ).scalar_one()
    )


@dataclass(frozen=True)
class AuditRow:
    id: int
    flow_run_id: str | None
    flow_name: str
    plan_hash: str
    approver: str
    approved_via: str
    identity: str
    signatures: list[dict[str, Any]]
    applied_at: datetime


def audit_rows(conn: Connection) -> list[AuditRow]:
    """Every audit row of this database, oldest first (none when there is no table)."""
    if conn.execute(text("SELECT to_regclass('safeops.safeops_audit')")).scalar_one() is None:
        return []
    has_signatures = _audit_table_exists(conn)
    extra = "identity, signatures" if has_signatures else "'unverified', '[]'::jsonb"
    rows = conn.execute(
        text(f"""
        SELECT id, flow_run_id, flow_name, plan_hash, approver, approved_via, {extra},
               applied_at
        FROM safeops.safeops_audit ORDER BY id""")
    ).all()
    return [
        AuditRow(
            int(r[0]),
            str(r[1]) if r[1] else None,
            str(r[2]),
            str(r[3]),
            str(r[4]),
            str(r[5]),
            str(r[6]),
            list(r[7] or []),
            r[8],
        )
        for r in rows
    ]


def recorded_apply(
    conn: Connection, flow_run_id: UUID | None, flow_name: str, plan_hash: str
) -> dict[str, Any] | None:
    """The counts record (``{"planned": …, "applied": …}``) of an apply this flow run
    already committed (a retry after a lost ack), or None. Reads only: a target without
    the audit table has no such apply (the table is created by the first write_audit)."""
    if flow_run_id is None:
        return None
    if conn.execute(text("SELECT to_regclass('safeops.safeops_audit')")).scalar_one() is None:
        return None
    row = conn.execute(
        text("""
        SELECT counts FROM safeops.safeops_audit
        WHERE flow_run_id = :run AND flow_name = :flow AND plan_hash = :hash
        ORDER BY id DESC LIMIT 1"""),
        {"run": flow_run_id, "flow": flow_name, "hash": plan_hash},
    ).scalar_one_or_none()
    return dict(row) if row is not None else None


def applied_counts(
    conn: Connection, flow_run_id: UUID | None, flow_name: str, plan_hash: str
) -> dict[str, int] | None:
    """Counts of an apply this flow run already committed (a retry after a lost ack)."""
    if flow_run_id is None:
        return None
    ensure_audit_table(conn)
    row = recorded_apply(conn, flow_run_id, flow_name, plan_hash)
    if row is None:
        return None
    # The row holds {"planned": …, "applied"/"deleted"/"restored": …}: hand back what the
    # apply itself returned, not the whole record.
    for key in ("applied", "deleted", "restored"):
        if isinstance(row.get(key), dict):
            return dict(row[key])
    return dict(row)


def recorded_for_snapshot(
    conn: Connection, flow_name: str, uri: str
) -> list[tuple[str, dict[str, Any]]]:
    """(plan hash, counts) of the committed applies of ``flow_name`` whose undo point is this
    snapshot (matched by file name: names are unique in a store and survive a copy).

    A restore compares them with the file: a snapshot edited after the apply, even with its
    checksum and summary recomputed to match, no longer agrees with what the apply recorded
    in the same transaction as its change."""
    if conn.execute(text("SELECT to_regclass('safeops.safeops_audit')")).scalar_one() is None:
        return []
    name = uri.strip().rstrip("/").rsplit("/", 1)[-1]
    rows = conn.execute(
        text("""
        SELECT plan_hash, counts FROM safeops.safeops_audit
        WHERE flow_name = :flow AND (snapshot_uri = :name
              OR right(snapshot_uri, length(:name) + 1) = '/' || :name)
        ORDER BY id"""),
        {"flow": flow_name, "name": name},
    ).all()
    return [(str(plan_hash), dict(counts or {})) for plan_hash, counts in rows]
