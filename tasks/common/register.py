"""The snapshot register: a restore trusts only snapshots this database's own runs wrote.

A snapshot's checksum proves it is intact, not that it is ours: anyone who can
write to the store can edit a file and recompute its checksum. So every
snapshot safeops writes is recorded, in the target database itself, in
``safeops.safeops_snapshots`` (kind, uri, the sha256 of its summary, which
records the body's sha256, totals, flow run, time), right after it is
published; a restore looks the file up there and refuses one it cannot trace
unless the operator says ``--untraced``, which the approval and the audit row
then show. Recorded by the summary's digest rather than the whole file's: the
summary names the body's sha256, and no reader accepts a body that does not hash
to it, so the summary digest identifies the whole file without reading a large
body twice at write time.

A snapshot of a read-only target (a hot standby, a read-only role) cannot be
recorded there: it says so when it is written (``sourceReadOnly`` in its
summary, a notice), and restoring it takes ``--untraced`` (README).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from prefect import get_run_logger
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from safeops.core import events
from safeops.core.db import transaction
from safeops.core.errors import SnapshotUntraced
from safeops.core.models import Plan, plan_hash_of
from safeops.core.snapshot_reader import SnapshotReader
from safeops.core.snapshot_writer import SnapshotWriter
from tasks.common.audit import ensure_audit_table
from tasks.common.run_id import current_flow_run_id

READ_ONLY_SQL = text(
    "SELECT pg_is_in_recovery() OR current_setting('default_transaction_read_only') = 'on'"
)


def target_is_read_only(conn: Connection) -> bool:
    """A standby, or a session whose writes are refused by default (a read-only role)."""
    return bool(conn.execute(READ_ONLY_SQL).scalar_one())


def record_snapshot(
    engine: Engine,
    *,
    kind: str,
    uri: str,
    writer: SnapshotWriter,
    totals: dict[str, Any],
    created_at: datetime,
    read_only: bool,
) -> bool:
    """Register a published snapshot in its source database; False (and a notice) when
    that database takes no writes, so the snapshot stays untraced."""
    if not read_only:
        try:
            with transaction(engine) as conn:
                ensure_audit_table(conn)
                conn.execute(
                    text("""
                    INSERT INTO safeops.safeops_snapshots
                        (kind, uri, summary_sha256, body_sha256, totals, flow_run_id,
                         created_at)
                    VALUES (:kind, :uri, :summary, :body, CAST(:totals AS jsonb), :run,
                            :created)"""),
                    {
                        "kind": kind,
                        "uri": uri,
                        "summary": writer.summary_sha256,
                        "body": writer.sha256,
                        "totals": json.dumps(totals),
                        "run": current_flow_run_id(),
                        "created": created_at,
                    },
                )
            return True
        except DBAPIError as exc:
            if not isinstance(
                exc.orig,
                (psycopg.errors.ReadOnlySqlTransaction, psycopg.errors.InsufficientPrivilege),
            ):
                raise
    notice = (
        f"snapshot {uri} is untraced: its source database takes no writes (a standby "
        "or a read-only role), so it is not in the snapshot register; restoring it "
        "needs --untraced"
    )
    events.emit("notice", text=notice)
    with contextlib.suppress(Exception):  # outside a run there is no run logger
        get_run_logger().warning(notice)
    return False


@dataclass(frozen=True)
class Trace:
    """Whether a restore's snapshot is one this database's runs wrote."""

    traced: bool
    summary_sha256: str

    def mark(self, plan: Plan, database: str) -> Plan:
        """An untraced restore's plan says so: in its counts (shown with the approval),
        its details and its hash (a saved plan of a traced file never approves it)."""
        if self.traced:
            return plan
        counts = {**plan.counts, "untraced_snapshot": 1}
        return plan.model_copy(
            update={
                "counts": counts,
                "details": [
                    *plan.details,
                    "UNTRACED snapshot: not in this database's snapshot "
                    f"register (summary sha256 {self.summary_sha256[:16]}…); restored on "
                    "the operator's word (--untraced)",
                ],
                "plan_hash": plan_hash_of(
                    {"plan": plan.plan_hash, "untraced": True}, database=database
                ),
            }
        )


# The undo points written before the register existed are traced by the audit row of
# the apply that wrote them, committed with its change: a purge records its snapshot's
# body sha256, a reset its snapshot's plan hash (which the file's rows must hash to).
AUDITED_SQL = text("""
SELECT EXISTS (SELECT 1 FROM safeops.safeops_audit
               WHERE (flow_name = 'purge-product-media'
                      AND counts ->> 'snapshotSha256' = :body)
                  OR (flow_name = 'reset-site-structure' AND plan_hash = :plan))""")


def _registered(conn: Connection, reader: SnapshotReader) -> bool:
    if (
        conn.execute(
            text("SELECT to_regclass('safeops.safeops_snapshots') IS NOT NULL")
        ).scalar_one()
        and conn.execute(
            text(
                "SELECT EXISTS (SELECT 1 FROM safeops.safeops_snapshots "
                "WHERE summary_sha256 = :digest)"
            ),
            {"digest": reader.summary_sha256},
        ).scalar_one()
    ):
        return True
    if not conn.execute(
        text("SELECT to_regclass('safeops.safeops_audit') IS NOT NULL")
    ).scalar_one():
        return False
    return bool(
        conn.execute(
            AUDITED_SQL,
            {"body": reader.actual_sha256, "plan": str(reader.summary.get("planHash") or "")},
        ).scalar_one()
    )


def trace_of(conn: Connection, reader: SnapshotReader, uri: str, *, allow_untraced: bool) -> Trace:
    """Look the (already checksum-verified) file up in the register, or in the audit row
    of the apply that wrote it; refuse one found in neither unless ``allow_untraced``."""
    digest = reader.summary_sha256
    registered = _registered(conn, reader)
    if not registered and not allow_untraced:
        raise SnapshotUntraced(
            f"Refused: snapshot {uri} is not in this database's snapshot register (summary "
            f"sha256 {digest[:16]}…): a restore trusts only snapshots safeops wrote from this "
            "database; pass --untraced (allow_untraced) to restore it anyway, and the "
            "approval and the audit row will say so; nothing changed."
        )
    return Trace(traced=bool(registered), summary_sha256=digest)
