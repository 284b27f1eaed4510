"""Tools of the fault suite: state checksums, the fully-applied state computed in a
rolled-back transaction, a stall trigger that parks an apply mid-transaction, and
ways to run the CLI (real subprocess, or in-process through Typer's runner).

The guarantee every fault test checks is the same: after the fault, each table's
checksum equals its value *before* the run or its value in the *fully-applied*
state, for all tables at once; never anything in between.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest

from tasks.common.slot import SLOT_CLASS
from tests.conftest import CMS_TABLES, MEDUSA_TABLES
from tests.pg import STAMPS, execute, scalar, table_checksums

ROOT = Path(__file__).resolve().parents[2]

MEDIA_PURGE_MODEL = [
    # An independent model of the purge (not the product's SQL): every image reference goes.
    "DELETE FROM product_variant_product_image",
    "DELETE FROM image",
    "UPDATE product SET thumbnail = NULL WHERE thumbnail IS NOT NULL",
    "UPDATE product_variant SET thumbnail = NULL "
    "WHERE thumbnail IS NOT NULL AND product_id IS NOT NULL",
]


# An independent model of a site reset (not the product's SQL), written from the README's
# "CMS schema contract": a reset of :site deletes the SEO meta of its categories, authors
# and pages, its categories (a term whose parent was one of them is detached, not
# cascaded away), authors, pages and content types, and resets its blueprint state.
# Posts (of any site) lose its authors, content types and category links but stay, with
# their SEO meta; tags, media, users, domains, settings, blueprints, AI jobs and every
# other site stay. What the schema's ON DELETE actions would do is written out too, so
# the model does not lean on them.
SITE_RESET_MODEL = [
    "DELETE FROM seo_meta s USING terms x WHERE s.entity_type = 'term' "
    "AND x.id = s.entity_id AND x.site_id = :site AND x.type = 'category'",
    "DELETE FROM seo_meta s USING authors x WHERE s.entity_type = 'author' "
    "AND x.id = s.entity_id AND x.site_id = :site",
    "DELETE FROM seo_meta s USING content x WHERE s.entity_type = 'content' "
    "AND x.id = s.entity_id AND x.site_id = :site AND x.type = 'page'",
    "DELETE FROM content_terms l USING terms x "
    "WHERE x.id = l.term_id AND x.site_id = :site AND x.type = 'category'",
    "DELETE FROM content_terms l USING content x "
    "WHERE x.id = l.content_id AND x.site_id = :site AND x.type = 'page'",
    "UPDATE terms t SET parent_id = NULL FROM terms p "
    "WHERE p.id = t.parent_id AND p.site_id = :site AND p.type = 'category'",
    "UPDATE content c SET author_id = NULL FROM authors a "
    "WHERE a.id = c.author_id AND a.site_id = :site",
    "UPDATE content c SET content_type_id = NULL FROM content_type x "
    "WHERE x.id = c.content_type_id AND x.site_id = :site",
    "DELETE FROM content WHERE site_id = :site AND type = 'page'",
    "DELETE FROM terms WHERE site_id = :site AND type = 'category'",
    "DELETE FROM authors WHERE site_id = :site",
    "DELETE FROM content_type WHERE site_id = :site",
    "UPDATE sites SET active_blueprint_version = NULL, setup_status = 'draft' WHERE id = :site",
]


def checksums(
    conn_or_url: psycopg.Connection[Any] | str, tables: list[str], ignore: tuple[str, ...] = STAMPS
) -> dict[str, str]:
    """``table_checksums`` minus the columns an apply stamps with now()."""
    return table_checksums(conn_or_url, tables, ignore)


def applied_state(url: str, tables: list[str], apply: Callable[[Any], None]) -> dict[str, str]:
    """The checksums the database would have once the change is fully applied, computed by
    applying it in a transaction that is rolled back (nothing is ever committed)."""
    from sqlalchemy import create_engine, text

    from safeops.core.settings import sqlalchemy_url

    engine = create_engine(sqlalchemy_url(url))
    try:
        with engine.connect() as conn:
            trans = conn.begin()
            try:
                conn.execute(text("SET LOCAL TimeZone = 'UTC'"))
                apply(conn)
                raw = conn.connection.driver_connection
                return checksums(raw, tables)  # type: ignore[arg-type]
            finally:
                trans.rollback()
    finally:
        engine.dispose()


def purge_model(conn: Any) -> None:
    from sqlalchemy import text

    for statement in MEDIA_PURGE_MODEL:
        conn.execute(text(statement))


def reset_model(site_id: str) -> Callable[[Any], None]:
    def apply(conn: Any) -> None:
        from sqlalchemy import text

        for statement in SITE_RESET_MODEL:
            conn.execute(text(statement), {"site": site_id})

    return apply


class States:
    """The two states a fault may leave behind, and a classifier."""

    def __init__(self, url: str, tables: list[str], apply: Callable[[Any], None]) -> None:
        self.url, self.tables, self.applied_fn = url, tables, apply
        self.before = checksums(url, tables)
        self.applied = applied_state(url, tables, apply)
        assert self.before != self.applied, "the change would change nothing"

    def now(self) -> str:
        """'before' or 'applied'; anything else fails, naming the tables in between."""
        current = checksums(self.url, self.tables)
        if current == self.before:
            return "before"
        if current == self.applied:
            return "applied"
        mixed = {
            t: (
                "before"
                if current[t] == self.before[t]
                else "applied"
                if current[t] == self.applied[t]
                else "neither"
            )
            for t in self.tables
            if self.before[t] != self.applied[t]
        }
        raise AssertionError(f"database is in between before and applied: {mixed}")


@pytest.fixture()
def media_states(medusa_url: str) -> States:
    return States(medusa_url, MEDUSA_TABLES, purge_model)


def site_states(url: str, site_id: str) -> States:
    return States(url, CMS_TABLES, reset_model(site_id))


# ---------------------------------------------------------------- stalling an apply


def slot_locks(url: str) -> list[tuple[int, str]]:
    """(backend pid, application_name) of every granted safeops slot lock in ``url``'s db."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT l.pid, coalesce(a.application_name, '') FROM pg_locks l "
            "LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 "
            "AND l.classid = %s::bigint::oid "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            (SLOT_CLASS,),
        ).fetchall()
    return [(int(pid), str(app)) for pid, app in rows]


def install_stall(url: str, table: str, seconds: float) -> None:
    """A BEFORE DELETE row trigger on ``table`` that sleeps once (the first row ever, counted
    by a sequence, which a rollback does not undo), so the apply parks mid-transaction after
    its earlier statements ran; a retry or re-run is not stalled again."""
    execute(
        url,
        f"""
        CREATE SEQUENCE faults_stall_seq;
        CREATE FUNCTION faults_stall() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF nextval('faults_stall_seq') = 1 THEN PERFORM pg_sleep({seconds}); END IF;
            RETURN OLD;
        END $$;
        CREATE TRIGGER faults_stall BEFORE DELETE ON {table}
            FOR EACH ROW EXECUTE FUNCTION faults_stall();""",
    )


def wait_for_stall(
    url: str, timeout_s: float = 120, alive: Callable[[], bool] = lambda: True
) -> tuple[int, str]:
    """(pid, query) of the safeops backend sleeping in the stall trigger."""
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT pid, query FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name = 'safeops' AND wait_event = 'PgSleep'"
            ).fetchone()
            if row:
                return int(row[0]), str(row[1])
            assert alive(), "the run ended without reaching the stalled statement"
            time.sleep(0.05)
    raise AssertionError("the apply never reached the stall trigger")


def terminate(url: str, pid: int) -> None:
    assert scalar(url, "SELECT pg_terminate_backend(%s)", pid) is True


def wait_backend_gone(url: str, pid: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not scalar(url, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", pid):
            return
        time.sleep(0.1)
    raise AssertionError(f"backend {pid} still there after {timeout_s} s")


# ---------------------------------------------------------------- Prefect API


def task_runs(flow_run_id: UUID, name: str, timeout_s: float = 30) -> list[Any]:
    """Task runs of a flow run whose name starts with ``name``, once all are final
    (the API records them asynchronously)."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            runs = [
                r
                for r in client.read_task_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
                )
                if r.name.startswith(name)
            ]
            if runs and all(r.state and r.state.is_final() for r in runs):
                return runs
            if time.monotonic() > deadline:
                return runs
            time.sleep(0.2)


def flow_run(run_id: UUID) -> Any:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id)


def runs_of(flow_name: str, since: Any) -> list[Any]:
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterStartTime,
    )

    with get_client(sync_client=True) as client:
        return list(
            client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=since)),
            )
        )


@contextmanager
def on_event(kind: str, action: Callable[[dict[str, Any]], None]) -> Iterator[None]:
    """Run ``action`` synchronously when a flow emits ``kind`` (before the CLI sees it)."""
    from safeops.core import events

    def listener(k: str, data: dict[str, Any]) -> None:
        if k == kind:
            action(data)

    with events.listening(listener):
        yield


# ---------------------------------------------------------------- snapshot files


def read_snapshot_file(path: str | Path) -> tuple[dict[str, Any], str, list[bytes]]:
    """(summary, body key, body documents) of a snapshot file."""
    import json

    lines = Path(path).read_bytes().split(b"\n")
    summary: dict[str, Any] = {}
    i = 1
    while not lines[i].endswith(b": ["):
        summary.update(json.loads(b"{" + lines[i].rstrip(b",") + b"}"))
        i += 1
    body_key = json.loads(lines[i][:-3])
    docs = []
    for line in lines[i + 1 :]:
        if line == b"]":
            break
        docs.append(line[:-1] if line.endswith(b",") else line)
    return summary, body_key, docs


def write_snapshot_file(
    path: str | Path, summary: dict[str, Any], body_key: str, docs: list[bytes]
) -> None:
    """Write a snapshot whose summary matches its body: the checksum recomputed, as a
    careful forger (or a buggy tool) would."""
    from safeops.core.snapshot_writer import SnapshotWriter

    writer = SnapshotWriter(summary["format"], body_key)
    try:
        for doc in docs:
            writer.add(doc)
        rest = {
            k: v for k, v in summary.items() if k not in ("format", "formatVersion", "bodySha256")
        }
        parts = writer.finish(rest)
        with open(path, "wb") as out:
            parts.write_to(out.fileno())
    finally:
        writer.discard()


def change_one_byte(path: str | Path, needle: bytes, replacement: bytes) -> None:
    """Edit the first body line holding ``needle``, same length, checksum left stale."""
    data = Path(path).read_bytes()
    start = data.index(b": [\n") + 4
    at = data.index(needle, start)
    assert len(needle) == len(replacement) and needle != replacement
    Path(path).write_bytes(data[:at] + replacement + data[at + len(needle) :])


def truncate_mid_body(path: str | Path) -> None:
    data = Path(path).read_bytes()
    start = data.index(b": [\n") + 4
    Path(path).write_bytes(data[: start + (len(data) - start) // 2])
