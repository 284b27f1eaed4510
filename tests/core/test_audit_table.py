"""The audit table's DDL check is cheap: checked without the advisory lock first, and
not at all once this process has seen the table committed in that database.

What these pin down: a database's first write creates the table under the lock;
later writes take no lock, and after the first one that finds the table, issue
no check at all; a CREATE that is rolled back with its apply is never taken as
"the table exists", even by a second check in the same transaction.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Connection, event, text

from tests.pg import fresh_database


@pytest.fixture()
def engine(pg_admin: str) -> Iterator[Any]:
    from safeops.core.db import engine_for_url

    with fresh_database(pg_admin, prefix="safeops_audit") as url:
        eng = engine_for_url(url)
        try:
            yield eng
        finally:
            eng.dispose()


def statements(conn: Connection) -> list[str]:
    seen: list[str] = []

    @event.listens_for(conn, "before_cursor_execute")
    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    return seen


def table_exists(conn: Connection) -> bool:
    return bool(
        conn.execute(text("SELECT to_regclass('safeops.safeops_audit') IS NOT NULL")).scalar_one()
    )


def test_first_write_creates_then_checks_stop(engine: Any) -> None:
    from tasks.common.audit import ensure_audit_table

    with engine.connect() as conn, conn.begin():
        seen = statements(conn)
        ensure_audit_table(conn)
        assert table_exists(conn)
        assert any("pg_advisory_xact_lock" in s for s in seen)  # created under the lock

    with engine.connect() as conn, conn.begin():
        seen = statements(conn)
        ensure_audit_table(conn)  # finds it committed: no lock, and remembers it
        assert len(seen) == 1 and "to_regclass" in seen[0], seen

    with engine.connect() as conn, conn.begin():
        seen = statements(conn)
        ensure_audit_table(conn)
        assert seen == []


def test_a_rolled_back_create_is_not_remembered(engine: Any) -> None:
    from safeops.core.models import Approval
    from tasks.common.audit import ensure_audit_table, write_audit

    with engine.connect() as conn:
        trans = conn.begin()
        ensure_audit_table(conn)  # creates it inside the apply's transaction
        ensure_audit_table(conn)  # sees its own uncommitted table
        trans.rollback()

    with engine.connect() as conn, conn.begin():
        assert not table_exists(conn)
        # So the next write checks, and creates, it again.
        assert (
            write_audit(
                conn,
                flow_run_id=None,
                flow_name="t",
                target="t",
                plan_hash="h",
                approval=Approval(approver="a", reason="r", via="pause"),
                counts={},
                snapshot_uri=None,
                started_at=None,
            )
            == 1
        )
