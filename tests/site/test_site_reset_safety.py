"""What keeps the CMS site-structure reset from losing data: the original feature's
acceptance, dry runs, approvals, the publish-at-the-worst-moment race, stale plans,
restore rules, bad input, the CLI contract, artifacts and a fault mid-apply.

Every test runs the real flows in-process (or the real CLI in a subprocess) against
a fresh PostgreSQL database and asserts on rows: whole-table checksums, per-site
checksums, and the exact rows a reset must keep.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors as pg_errors

from flows.site_check import check_site_reset
from flows.site_reset import reset_site_structure
from flows.site_restore import restore_site_structure
from safeops.core.errors import (
    ApprovalDenied,
    ApprovalTimedOut,
    BadInput,
    PlanMismatch,
    ResetNotAllowed,
    RestoreConflict,
    SnapshotInvalid,
)
from safeops.core.models import RunResult
from tests.conftest import CMS_TABLES, answer_approval, approve_as
from tests.pg import audit_count, execute, scalar, table_checksums

Cms = tuple[str, dict[str, str]]

# ---------------------------------------------------------------- helpers


def digest(url: str, sql: str, *params: object) -> str:
    """count:md5 of the rows a query returns (order-independent)."""
    with psycopg.connect(url) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        row = conn.execute(
            f"SELECT count(*), md5(COALESCE(string_agg(q::text, '|' ORDER BY q::text), '')) "
            f"FROM ({sql}) q",
            params,
        ).fetchone()
    assert row is not None
    return f"{row[0]}:{row[1]}"


def count(url: str, sql: str, *params: object) -> int:
    return int(scalar(url, sql, *params))  # type: ignore[call-overload]


SITE_ROWS = {
    "sites": "SELECT t FROM sites t WHERE t.id = %(s)s",
    "content_terms": "SELECT t FROM content_terms t WHERE t.content_id IN "
    "(SELECT id FROM content WHERE site_id = %(s)s) OR t.term_id IN "
    "(SELECT id FROM terms WHERE site_id = %(s)s)",
    **{
        table: f"SELECT t FROM {table} t WHERE t.site_id = %(s)s"
        for table in CMS_TABLES
        if table not in ("sites", "content_terms", "users")
    },
}


def site_checksums(url: str, site_id: str) -> dict[str, str]:
    """Every CMS table's rows that belong to one site."""
    out = {}
    with psycopg.connect(url) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        for table, sql in SITE_ROWS.items():
            row = conn.execute(
                f"SELECT count(*), md5(COALESCE(string_agg(q::text, '|' ORDER BY q::text), "
                f"'')) FROM ({sql}) q",
                {"s": site_id},
            ).fetchone()
            assert row is not None
            out[table] = f"{row[0]}:{row[1]}"
    return out


# What a reset must keep, row for row (posts without the two SET NULL columns).
KEPT = {
    "tags": "SELECT * FROM terms WHERE site_id = %s AND type = 'tag'",
    "posts": "SELECT id, site_id, type, status, title, slug, body, published_at, "
    "scheduled_for, created_at FROM content WHERE site_id = %s AND type = 'post'",
    "post_tag_links": "SELECT ct.* FROM content_terms ct JOIN content c ON c.id = ct.content_id "
    "JOIN terms t ON t.id = ct.term_id WHERE c.site_id = %s "
    "AND t.type = 'tag'",
    "posts_and_site_seo": "SELECT s.* FROM seo_meta s WHERE s.site_id = %s AND "
    "(s.entity_type = 'site' OR s.entity_id IN "
    "(SELECT id FROM content WHERE type = 'post'))",
    "media": "SELECT * FROM media WHERE site_id = %s",
    "domains": "SELECT * FROM domains WHERE site_id = %s",
    "site_settings": "SELECT * FROM site_settings WHERE site_id = %s",
    "site_blueprint": "SELECT * FROM site_blueprint WHERE site_id = %s",
    "ai_jobs": "SELECT * FROM ai_jobs WHERE site_id = %s",
    "site_identity": "SELECT id, name, slug, site_type, created_at FROM sites WHERE id = %s",
}


def kept_rows(url: str, site_id: str) -> dict[str, str]:
    out = {name: digest(url, sql, site_id) for name, sql in KEPT.items()}
    out["users"] = digest(url, "SELECT * FROM users")
    return out


STRUCTURE = {
    "categories": "SELECT count(*) FROM terms WHERE site_id = %s AND type = 'category'",
    "authors": "SELECT count(*) FROM authors WHERE site_id = %s",
    "pages": "SELECT count(*) FROM content WHERE site_id = %s AND type = 'page'",
    "content_types": "SELECT count(*) FROM content_type WHERE site_id = %s",
    "seo_entries": "SELECT count(*) FROM seo_meta s WHERE s.site_id = %s AND ("
    "(s.entity_type = 'term' AND s.entity_id IN (SELECT id FROM terms "
    "WHERE type = 'category')) OR s.entity_type = 'author' OR "
    "(s.entity_type = 'content' AND s.entity_id IN (SELECT id FROM content "
    "WHERE type = 'page')))",
}


def structure_counts(url: str, site_id: str) -> dict[str, int]:
    return {name: count(url, sql, site_id) for name, sql in STRUCTURE.items()}


def structure_slugs(url: str, site_id: str) -> dict[str, list[str]]:
    """Sorted slugs (with duplicates, so doubling up shows) of the blueprint structure."""
    queries = {
        "categories": "SELECT t.slug || '<' || COALESCE(p.slug, '') FROM terms t "
        "LEFT JOIN terms p ON p.id = t.parent_id "
        "WHERE t.site_id = %s AND t.type = 'category'",
        "authors": "SELECT slug FROM authors WHERE site_id = %s",
        "pages": "SELECT slug || ':' || status FROM content WHERE site_id = %s AND type = 'page'",
        "content_types": "SELECT key || ':' || fields::text FROM content_type WHERE site_id = %s",
        "seo": "SELECT entity_type || ' ' || canonical_url || ' ' || title FROM seo_meta "
        "WHERE site_id = %s",
    }
    with psycopg.connect(url) as conn:
        return {
            name: sorted(r[0] for r in conn.execute(sql, (site_id,)))
            for name, sql in queries.items()
        }


ORPHAN_SEO = """SELECT count(*) FROM seo_meta s WHERE
    (s.entity_type = 'term' AND NOT EXISTS (SELECT 1 FROM terms x WHERE x.id = s.entity_id))
 OR (s.entity_type = 'author' AND NOT EXISTS (SELECT 1 FROM authors x WHERE x.id = s.entity_id))
 OR (s.entity_type = 'content' AND NOT EXISTS (SELECT 1 FROM content x
                                               WHERE x.id = s.entity_id))"""


def a_draft(url: str, site_id: str, offset: int = 0) -> str:
    return str(
        scalar(
            url,
            "SELECT id FROM content WHERE site_id = %s AND type = 'post' "
            "AND status = 'draft' ORDER BY title OFFSET %s LIMIT 1",
            site_id,
            offset,
        )
    )


def publish(url: str, post_id: str) -> None:
    execute(
        url, "UPDATE content SET status = 'published', published_at = now() WHERE id = %s", post_id
    )


def reset_live(site_id: str, approver: str = "alice") -> tuple[RunResult, dict[str, Any]]:
    with answer_approval(approve_as(approver)) as seen:
        result = reset_site_structure(site_id, dry_run=False)
    assert len(seen) == 1
    return result, seen[0]


def restore_live(uri: str, **kwargs: Any) -> tuple[RunResult, list[dict[str, Any]]]:
    with answer_approval(approve_as()) as seen:
        result = restore_site_structure(uri, dry_run=False, **kwargs)
    return result, seen


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def body() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # handed back to the test
            outcome["error"] = exc

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, outcome


def wait_for_lock_wait(url: str, thread: threading.Thread, timeout_s: float = 60) -> None:
    """Until the reset's backend (application_name 'safeops') waits on a row/table lock."""
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name = 'safeops' AND wait_event_type = 'Lock'"
            ).fetchone()
            if row and row[0]:
                return
            assert thread.is_alive(), "the reset finished without ever waiting on a lock"
            time.sleep(0.05)
    raise AssertionError("the reset never waited on the publisher's lock")


def read_artifacts(run_id: Any) -> dict[str, Any]:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        )
    return {a.key: a for a in found if a.key}


# ---------------------------------------------------------------- 1. original acceptance


def test_one_published_post_turns_check_and_reset_to_refusals_that_write_nothing(
    cms: Cms, exports: Path
) -> None:
    url, sites = cms
    atelier = sites["atelier"]
    assert check_site_reset(atelier)["canReset"] is True

    publish(url, a_draft(url, atelier))
    before = table_checksums(url, CMS_TABLES)
    verdict = check_site_reset(atelier)
    assert verdict["canReset"] is False and verdict["publishedCount"] == 1
    assert "1 published post(s)" in verdict["reason"]
    with pytest.raises(ResetNotAllowed, match="1 published post"):
        reset_site_structure(atelier, dry_run=False)
    assert table_checksums(url, CMS_TABLES) == before
    assert audit_count(url) == 0
    assert not exports.exists() or not list(exports.iterdir())  # refused before the snapshot


def test_reset_keeps_what_it_must_and_reapplying_the_blueprint_is_clean(
    cms: Cms, exports: Path
) -> None:
    from sqlalchemy import create_engine

    from safeops.core.settings import sqlalchemy_url
    from safeops.seeds.cms import apply_blueprint

    url, sites = cms
    atelier = sites["atelier"]
    others = {slug: site_checksums(url, sites[slug]) for slug in ("gazette", "empty-site")}
    kept = kept_rows(url, atelier)
    original = structure_slugs(url, atelier)
    planned = structure_counts(url, atelier)
    assert count(url, ORPHAN_SEO) == 0
    assert (
        count(
            url,
            "SELECT count(*) FROM content WHERE site_id = %s AND type = 'post' "
            "AND (author_id IS NOT NULL OR content_type_id IS NOT NULL)",
            atelier,
        )
        == 3
    )
    assert planned == {
        "categories": 4,
        "authors": 2,
        "pages": 3,
        "content_types": 2,
        "seo_entries": 9,
    }

    result, _ = reset_live(atelier)
    assert {k: result.applied[k] for k in planned} == planned
    assert structure_counts(url, atelier) == dict.fromkeys(planned, 0)
    assert count(url, ORPHAN_SEO) == 0
    # Kept things kept, row for row; posts only lost their author and content type.
    assert kept_rows(url, atelier) == kept
    assert (
        count(
            url,
            "SELECT count(*) FROM content WHERE site_id = %s AND type = 'post' "
            "AND (author_id IS NOT NULL OR content_type_id IS NOT NULL)",
            atelier,
        )
        == 0
    )
    assert (
        count(
            url,
            "SELECT count(*) FROM content_terms ct JOIN terms t ON t.id = ct.term_id "
            "WHERE t.site_id = %s AND t.type = 'category'",
            atelier,
        )
        == 0
    )
    assert (
        scalar(
            url,
            "SELECT active_blueprint_version IS NULL AND setup_status = 'draft' "
            "FROM sites WHERE id = %s",
            atelier,
        )
        is True
    )
    # Every other site untouched, table by table.
    for slug, checksums in others.items():
        assert site_checksums(url, sites[slug]) == checksums, slug

    engine = create_engine(sqlalchemy_url(url))
    try:
        with engine.begin() as conn:
            applied = apply_blueprint(conn, atelier, 2)
    finally:
        engine.dispose()
    assert applied == planned
    assert structure_slugs(url, atelier) == original  # same slugs, urls, titles; no doubles
    assert structure_counts(url, atelier) == planned
    for entity_type, entities in (
        ("term", "SELECT id FROM terms WHERE type = 'category'"),
        ("author", "SELECT id FROM authors"),
        ("content", "SELECT id FROM content WHERE type = 'page'"),
    ):
        per_entity = f"""SELECT count(*) FROM ({entities}) e
            LEFT JOIN seo_meta s ON s.entity_type = '{entity_type}' AND s.entity_id = e.id
            GROUP BY e.id HAVING count(s.id) <> 1"""
        assert count(url, f"SELECT count(*) FROM ({per_entity}) bad") == 0, entity_type
    assert count(url, ORPHAN_SEO) == 0
    assert scalar(url, "SELECT active_blueprint_version FROM sites WHERE id = %s", atelier) == 2
    assert count(url, "SELECT count(*) FROM site_blueprint WHERE site_id = %s", atelier) == 2


# ---------------------------------------------------------------- 2. dry run


def test_dry_run_changes_nothing_and_writes_a_readable_snapshot(cms: Cms, exports: Path) -> None:
    from tests.faults.conftest import read_snapshot_file

    url, sites = cms
    before = table_checksums(url, CMS_TABLES)
    result = reset_site_structure(sites["atelier"])  # dry run is the default
    assert result.dry_run and not result.applied
    assert table_checksums(url, CMS_TABLES) == before
    assert audit_count(url) == 0

    assert result.snapshot_uri and Path(result.snapshot_uri).is_file()
    head = Path(result.snapshot_uri).read_text().splitlines()[:24]
    expected = [
        '"format": "safeops/cms-site-structure-snapshot",',
        f'"siteId": "{sites["atelier"]}",',
        '"siteSlug": "atelier",',
        f'"planHash": "{result.plan.plan_hash}",',
        '"total_categories": 4,',
        '"total_authors": 2,',
        '"total_pages": 3,',
        '"total_content_types": 2,',
        '"total_seo_entries": 9,',
        '"total_site_state": 1,',
    ]
    for line in expected:
        assert line in head, line
    assert any(line.startswith('"bodySha256": "') for line in head)
    # The body reads back line by line: one JSON document per row, as many of each kind
    # as the summary says.
    summary, body_key, docs = read_snapshot_file(result.snapshot_uri)
    assert body_key == "rows" and summary["totalRows"] == len(docs)
    bodies = [json.loads(doc) for doc in docs]
    kinds = Counter(body["kind"] for body in bodies)
    assert kinds == {
        k.removeprefix("total_"): v for k, v in summary.items() if k.startswith("total_") and v
    }
    assert all(isinstance(body["row"], dict) and body["row"] for body in bodies)
    assert result.plan.counts["posts_losing_author"] == 3
    assert result.plan.counts["posts_losing_category_links"] == 5


# ---------------------------------------------------------------- 3. approval refusals


def test_rejection_wrong_slug_and_timeout_change_nothing(cms: Cms, exports: Path) -> None:
    url, sites = cms
    atelier = sites["atelier"]
    before = table_checksums(url, CMS_TABLES)
    answers = {
        "rejected": {
            "approver": "bob",
            "reason": "not now",
            "confirmation": "atelier",
            "decision": "reject",
        },
        "wrong slug": {
            "approver": "bob",
            "reason": "ticket OPS-2",
            "confirmation": "gazette",
            "decision": "approve",
        },
    }
    for name, answer in answers.items():
        with answer_approval(answer) as seen, pytest.raises(ApprovalDenied) as refused:
            reset_site_structure(atelier, dry_run=False)
        assert len(seen) == 1 and seen[0]["expected_confirmation"] == "atelier", name
        assert not isinstance(refused.value, ApprovalTimedOut), name
        assert "nothing changed" in str(refused.value), name
        assert table_checksums(url, CMS_TABLES) == before, name
    assert "'gazette' does not match 'atelier'" in str(refused.value)

    with pytest.raises(ApprovalTimedOut, match="timed out after 2 s"):
        reset_site_structure(atelier, dry_run=False, approval_timeout_s=2)
    assert table_checksums(url, CMS_TABLES) == before
    assert audit_count(url) == 0


# ---------------------------------------------------------------- 4. the race


def test_post_published_during_the_pause_makes_the_reset_refuse(cms: Cms, exports: Path) -> None:
    url, sites = cms
    atelier = sites["atelier"]
    during: dict[str, str] = {}

    def publish_then_approve(data: dict[str, Any]) -> dict[str, Any]:
        publish(url, a_draft(url, atelier))
        during.update(table_checksums(url, CMS_TABLES))
        return approve_as()(data)

    with (
        answer_approval(publish_then_approve) as seen,
        pytest.raises(ResetNotAllowed, match="1 published post"),
    ):
        reset_site_structure(atelier, dry_run=False)
    assert len(seen) == 1 and during
    assert table_checksums(url, CMS_TABLES) == during
    assert structure_counts(url, atelier)["categories"] == 4
    assert audit_count(url) == 0


def test_publish_committed_while_the_apply_waits_on_its_lock_refuses(
    cms: Cms, exports: Path
) -> None:
    """The worst moment: the publisher's transaction is open when the apply starts (check
    and snapshot saw 0 published posts) and commits while the apply waits for its locks.
    Two publishers: one publishes a draft (row lock on the post), one inserts a new
    published post (key-share lock on the site row through the foreign key)."""
    url, sites = cms
    atelier = sites["atelier"]
    before = table_checksums(url, CMS_TABLES)
    plan = reset_site_structure(atelier).plan.plan_hash
    draft = a_draft(url, atelier)
    new_post = str(uuid.uuid4())
    publishers = {
        "update-draft": (
            "UPDATE content SET status = 'published' WHERE id = %s",
            (draft,),
            "UPDATE content SET status = 'draft' WHERE id = %s",
            draft,
        ),
        "insert-published": (
            "INSERT INTO content (id, site_id, type, status, title, slug, published_at) "
            "VALUES (%s, %s, 'post', 'published', 'Breaking', 'breaking', now())",
            (new_post, atelier),
            "DELETE FROM content WHERE id = %s",
            new_post,
        ),
    }
    for name, (publish_sql, params, undo_sql, undo_id) in publishers.items():
        publisher = psycopg.connect(url)  # the first statement opens its transaction
        try:
            publisher.execute(publish_sql, params)
            thread, outcome = in_thread(
                lambda: reset_site_structure(
                    atelier, dry_run=False, approved_plan_hash=plan, approved_by="alice"
                )
            )
            wait_for_lock_wait(url, thread)
            publisher.commit()
        finally:
            publisher.close()
        thread.join(120)
        assert not thread.is_alive(), name
        error = outcome.get("error")
        assert isinstance(error, ResetNotAllowed), (name, outcome)
        assert "1 published post" in str(error) and "published since the check" in str(error)
        assert structure_counts(url, atelier)["categories"] == 4, name
        assert audit_count(url) == 0, name
        # Take the publish back out: every table is exactly as before, nothing was deleted.
        execute(url, undo_sql, undo_id)
        assert table_checksums(url, CMS_TABLES) == before, name


def test_publishers_wait_while_the_reset_holds_its_locks(cms: Cms) -> None:
    from safeops.core.db import engine_for, transaction
    from tasks.site.check import published_posts
    from tasks.site.reset import delete_structure, lock_site_for_reset

    url, sites = cms
    atelier, gazette = sites["atelier"], sites["gazette"]
    draft = a_draft(url, atelier)
    insert = (
        "INSERT INTO content (site_id, type, status, title, slug, published_at) "
        "VALUES (%s, 'post', 'published', 'Late news', %s, now())"
    )

    def attempt(sql: str, *params: object) -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SET lock_timeout = '500ms'")
            conn.execute(sql, params)

    engine = engine_for("cms")
    try:
        with transaction(engine) as conn:
            lock_site_for_reset(conn, atelier)
            with pytest.raises(pg_errors.LockNotAvailable):
                attempt(insert, atelier, "late-news")
            with pytest.raises(pg_errors.LockNotAvailable):
                attempt("UPDATE content SET status = 'published' WHERE id = %s", draft)
            attempt(insert, gazette, "late-news")  # other sites publish freely
            assert published_posts(conn, atelier) == 0
            deleted = delete_structure(conn, atelier)
            assert deleted["categories"] == 4
    finally:
        engine.dispose()
    # Once the reset committed, the same statements go through.
    attempt(insert, atelier, "late-news")
    attempt("UPDATE content SET status = 'published' WHERE id = %s", draft)
    assert (
        count(
            url,
            "SELECT count(*) FROM content WHERE site_id = %s AND type = 'post' "
            "AND status = 'published'",
            atelier,
        )
        == 2
    )


# ---------------------------------------------------------------- 5. stale plan hash


def current_plan_hash(site_id: str) -> str:
    from safeops.core.db import engine_for, read_snapshot
    from tasks.site.structure import reset_plan

    engine = engine_for("cms")
    try:
        with read_snapshot(engine) as conn:
            return reset_plan(conn, site_id, "cms").plan_hash
    finally:
        engine.dispose()


def test_stale_plan_hash_is_refused_and_content_edits_change_the_hash(
    cms: Cms, exports: Path
) -> None:
    url, sites = cms
    atelier = sites["atelier"]
    first = reset_site_structure(atelier).plan.plan_hash
    assert current_plan_hash(atelier) == first  # stable while nothing moves

    execute(
        url,
        "INSERT INTO terms (site_id, type, name, slug) VALUES (%s, 'category', 'Late', 'late')",
        atelier,
    )
    before = table_checksums(url, CMS_TABLES)
    with pytest.raises(PlanMismatch, match="does not match"):
        reset_site_structure(atelier, dry_run=False, approved_plan_hash=first, approved_by="alice")
    assert table_checksums(url, CMS_TABLES) == before
    assert audit_count(url) == 0

    execute(url, "DELETE FROM terms WHERE site_id = %s AND slug = 'late'", atelier)
    assert current_plan_hash(atelier) == first
    # Same ids and counts, other content: a page's title is edited.
    execute(
        url,
        "UPDATE content SET title = 'About us' WHERE site_id = %s AND type = 'page' "
        "AND slug = 'about'",
        atelier,
    )
    assert current_plan_hash(atelier) != first
    before = table_checksums(url, CMS_TABLES)
    with pytest.raises(PlanMismatch, match="pages=3"):
        reset_site_structure(atelier, dry_run=False, approved_plan_hash=first, approved_by="alice")
    assert table_checksums(url, CMS_TABLES) == before
    assert audit_count(url) == 0


# ---------------------------------------------------------------- 6. restore rules


def test_restore_twice_restores_nothing_the_second_time(cms: Cms, exports: Path) -> None:
    url, sites = cms
    before = table_checksums(url, CMS_TABLES)
    reset, _ = reset_live(sites["atelier"])
    assert reset.snapshot_uri

    restored, seen = restore_live(reset.snapshot_uri)
    assert len(seen) == 1 and restored.applied["categories"] == 4
    assert table_checksums(url, CMS_TABLES) == before

    again, seen = restore_live(reset.snapshot_uri)
    assert seen == []  # nothing to approve
    assert again.applied == {} and again.message.startswith("Nothing to restore")
    assert again.plan.counts["categories_already_present"] == 4
    assert table_checksums(url, CMS_TABLES) == before


def test_a_snapshot_written_before_plan_digest_2_still_verifies_and_restores(
    cms: Cms, exports: Path
) -> None:
    """Snapshots are the only undo point: one whose plan hash was made with the first
    digest (ordered md5, no "planDigest" key) must stay restorable, and a forged
    version number is refused as a format error."""
    from safeops.core.db import engine_for, read_snapshot
    from tasks.site.snapshot import load_snapshot, snapshot_plan_hash
    from tasks.site.structure import DIGEST_VERSION
    from tests.faults.conftest import read_snapshot_file, write_snapshot_file

    url, sites = cms
    before = table_checksums(url, CMS_TABLES)
    reset, _ = reset_live(sites["atelier"])
    uri = str(reset.snapshot_uri)
    summary, key, docs = read_snapshot_file(uri)
    assert summary["planDigest"] == DIGEST_VERSION == 3
    engine = engine_for("cms")
    try:
        with read_snapshot(engine) as conn:
            load_snapshot(conn, iter(docs), uri)
            old_hash, _ = snapshot_plan_hash(conn, sites["atelier"], version=1)
    finally:
        engine.dispose()
    assert old_hash != summary["planHash"]
    del summary["planDigest"]
    summary["planHash"] = old_hash
    write_snapshot_file(uri, summary, key, docs)
    execute(
        url,
        "UPDATE safeops.safeops_audit SET plan_hash = %s WHERE flow_name = 'reset-site-structure'",
        old_hash,
    )  # as an old reset wrote

    restored, seen = restore_live(uri)
    assert len(seen) == 1 and restored.applied["categories"] == 4
    assert table_checksums(url, CMS_TABLES) == before

    write_snapshot_file(uri, {**summary, "planDigest": 4}, key, docs)
    with pytest.raises(SnapshotInvalid, match="Unknown plan digest version 4"):
        restore_site_structure(uri, dry_run=True)


def test_resetting_a_reset_site_asks_nothing_and_changes_nothing(cms: Cms, exports: Path) -> None:
    """Once reset, a site has no structure and a draft blueprint state: a second reset
    (live or dry) says so instead of asking someone to approve deleting nothing; a
    site whose structure is gone but whose blueprint state is not still resets it."""
    url, sites = cms
    reset_live(sites["atelier"])
    after_first = table_checksums(url, CMS_TABLES)

    with answer_approval(approve_as()) as seen:
        again = reset_site_structure(sites["atelier"], dry_run=False)
    assert seen == [] and again.applied == {}
    assert again.message.startswith("Nothing to reset") and again.plan.is_empty
    assert reset_site_structure(sites["atelier"]).message.startswith("Nothing to reset")
    assert table_checksums(url, CMS_TABLES) == after_first
    assert audit_count(url) == 1

    execute(
        url,
        "UPDATE sites SET active_blueprint_version = 7, setup_status = 'ready' WHERE id = %s",
        sites["atelier"],
    )
    state, _ = reset_live(sites["atelier"])  # reset_live asserts one approval was asked
    assert state.plan.counts["site_state_to_reset"] == 1 and not state.message
    assert (
        count(
            url,
            "SELECT count(*) FROM sites WHERE id = %s AND setup_status = 'draft' "
            "AND active_blueprint_version IS NULL",
            sites["atelier"],
        )
        == 1
    )


def test_restore_refuses_conflicts_unless_told_to_skip_them(cms: Cms, exports: Path) -> None:
    """After the reset the site gained a 'guides' category (the deleted one had the child
    'how-to') and a 'maya-fischer' author (the deleted one wrote every page)."""
    url, sites = cms
    atelier = sites["atelier"]
    reset, _ = reset_live(atelier)
    assert reset.snapshot_uri
    execute(
        url,
        "INSERT INTO terms (site_id, type, name, slug) "
        "VALUES (%s, 'category', 'Guides (new)', 'guides')",
        atelier,
    )
    execute(
        url,
        "INSERT INTO authors (site_id, name, slug) VALUES (%s, 'Maya F. (new)', 'maya-fischer')",
        atelier,
    )
    before = table_checksums(url, CMS_TABLES)

    with pytest.raises(RestoreConflict) as conflict:
        restore_site_structure(reset.snapshot_uri)
    message = str(conflict.value)
    assert "authors=1" in message and "categories=1" in message
    assert "subcategories=1" in message and "nothing changed" in message
    assert table_checksums(url, CMS_TABLES) == before

    restored, seen = restore_live(reset.snapshot_uri, skip_conflicts=True)
    assert len(seen) == 1
    counts = restored.plan.counts
    assert counts["categories_conflicting"] == 1 and counts["subcategories_conflicting"] == 1
    assert counts["authors_conflicting"] == 1
    applied = restored.applied
    assert (applied["categories"], applied["authors"]) == (2, 1)  # news, reviews; jonas
    assert (applied["pages"], applied["content_types"]) == (3, 2)
    assert applied["categories"] == counts["categories"]
    # The rows created since the reset are never clobbered.
    assert (
        scalar(
            url,
            "SELECT name FROM terms WHERE site_id = %s AND type = 'category' AND slug = 'guides'",
            atelier,
        )
        == "Guides (new)"
    )
    assert (
        scalar(
            url, "SELECT name FROM authors WHERE site_id = %s AND slug = 'maya-fischer'", atelier
        )
        == "Maya F. (new)"
    )
    assert structure_counts(url, atelier) == {
        "categories": 3,
        "authors": 2,
        "pages": 3,
        "content_types": 2,
        "seo_entries": 2 + 1 + 3,
    }
    # Pages went back without the skipped author (its link was ON DELETE SET NULL).
    assert (
        count(
            url,
            "SELECT count(*) FROM content WHERE site_id = %s AND type = 'page' "
            "AND author_id IS NULL",
            atelier,
        )
        == 3
    )
    assert count(url, ORPHAN_SEO) == 0


# ---------------------------------------------------------------- 8. bad input


MALFORMED_SITE_IDS = ["not-a-uuid", "", "x" * 500, "'; DROP TABLE sites; --", "sité-ü"]


def test_malformed_or_unknown_site_id_is_bad_input(cms: Cms, exports: Path) -> None:
    url, _ = cms
    before = table_checksums(url, CMS_TABLES)
    for bad in MALFORMED_SITE_IDS:
        with pytest.raises(BadInput, match="expected a UUID"):
            reset_site_structure(bad, dry_run=False)
    with pytest.raises(BadInput, match="Unknown site"):
        check_site_reset(str(uuid.uuid4()))
    assert scalar(url, "SELECT to_regclass('public.sites') IS NOT NULL") is True
    assert table_checksums(url, CMS_TABLES) == before
    assert not exports.exists() or not list(exports.iterdir())


# ---------------------------------------------------------------- 8 + 9. the CLI


def test_site_cli_exit_codes_2_and_3_and_dry_run_lines(cms: Cms, exports: Path) -> None:
    from tests.cli import lines_starting, safeops

    url, sites = cms
    before = table_checksums(url, CMS_TABLES)
    commands = {
        "drop": ("site", "check", "'; DROP TABLE sites; --"),
        "unknown": ("site", "reset", str(uuid.uuid4())),
        "gazette": ("site", "check", sites["gazette"]),
        "dry-run": ("site", "reset", sites["atelier"]),
    }
    # One after the other: each is ≈10 s of start-up, and side by side they only contend
    # for the CPU and for the test server's SQLite database (503 + retry).
    runs = {name: safeops(*args) for name, args in commands.items()}

    for name in ("drop", "unknown"):
        run = runs[name]
        assert run.returncode == 2, (name, run.stdout, run.stderr)
        assert len(run.stderr.strip().splitlines()) == 1, (name, run.stderr)
    assert "expected a UUID" in runs["drop"].stderr
    assert "Unknown site" in runs["unknown"].stderr

    gazette = runs["gazette"]
    assert gazette.returncode == 3, gazette.stderr
    (reason,) = gazette.stderr.strip().splitlines()
    assert "2 published" in reason

    dry = runs["dry-run"]
    assert dry.returncode == 0, dry.stderr
    (uri,) = lines_starting(dry.stdout, "snapshot: ")
    (plan,) = lines_starting(dry.stdout, "plan: ")
    assert Path(uri).is_file() and len(plan) == 64
    assert f'"planHash": "{plan}",' in Path(uri).read_text().splitlines()[:12]

    assert scalar(url, "SELECT to_regclass('public.sites') IS NOT NULL") is True
    assert table_checksums(url, CMS_TABLES) == before


# ---------------------------------------------------------------- 7 + 10. allowlist, artifacts


def test_allowlist_rejects_alice_then_bobs_reset_reports_real_counts(
    cms: Cms, exports: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, sites = cms
    atelier = sites["atelier"]
    monkeypatch.setenv("SAFEOPS_APPROVERS", "bob,carol")
    before = table_checksums(url, CMS_TABLES)
    real = structure_counts(url, atelier)
    with (
        answer_approval(approve_as("alice")),
        pytest.raises(ApprovalDenied, match="'alice' is not in SAFEOPS_APPROVERS"),
    ):
        reset_site_structure(atelier, dry_run=False)
    assert table_checksums(url, CMS_TABLES) == before
    assert audit_count(url) == 0

    with answer_approval(approve_as("bob", "ticket OPS-9")) as seen:
        result = reset_site_structure(atelier, dry_run=False)
    assert result.approval is not None and result.approval.approver == "bob"
    assert structure_counts(url, atelier) == dict.fromkeys(real, 0)  # all of it went
    run_id = seen[0]["flow_run_id"]

    # The deletion-count table (the original success alert) shows the real numbers.
    artifacts = read_artifacts(run_id)
    rows = json.loads(artifacts["site-reset-deleted"].data)
    assert {row["what"]: row["deleted"] for row in rows} == real
    summary = artifacts["site-reset-summary"].data
    assert "bob" in summary and result.plan.plan_hash in summary
    assert result.snapshot_uri and Path(result.snapshot_uri).name in str(
        artifacts["site-reset-snapshot"].data
    )

    with psycopg.connect(url) as conn:
        audit = conn.execute(
            "SELECT approver, reason, plan_hash, counts, snapshot_uri "
            "FROM safeops.safeops_audit WHERE flow_run_id = %s",
            (run_id,),
        ).fetchall()
    assert len(audit) == 1
    approver, reason, plan_hash, counts, snapshot_uri = audit[0]
    assert (approver, reason, plan_hash) == ("bob", "ticket OPS-9", result.plan.plan_hash)
    assert counts["site_id"] == atelier
    assert {k: counts["deleted"][k] for k in real} == real
    assert {k: counts["planned"][k] for k in real} == real
    assert snapshot_uri == result.snapshot_uri


# ---------------------------------------------------------------- 11. fault mid-apply


def test_fault_at_the_last_statement_rolls_everything_back(cms: Cms, exports: Path) -> None:
    url, sites = cms
    atelier = sites["atelier"]
    execute(
        url,
        """
        CREATE FUNCTION safeops_test_fault() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'injected fault: site update refused'; END $$;
        CREATE TRIGGER safeops_test_fault BEFORE UPDATE ON sites
            FOR EACH ROW EXECUTE FUNCTION safeops_test_fault();""",
    )
    before = table_checksums(url, CMS_TABLES)

    with answer_approval(approve_as()) as seen:
        state = reset_site_structure(atelier, dry_run=False, return_state=True)
    assert len(seen) == 1  # it got as far as the apply
    assert state.is_failed()
    assert "injected fault" in str(state.message) + repr(state.result(raise_on_failure=False))
    # SEO rows, pages, categories, authors, content types were deleted before the failing
    # UPDATE: every one of them is back.
    assert table_checksums(url, CMS_TABLES) == before
    assert audit_count(url) == 0

    execute(url, "DROP TRIGGER safeops_test_fault ON sites")
    result = reset_site_structure(
        atelier, dry_run=False, approved_plan_hash=seen[0]["plan"].plan_hash, approved_by="alice"
    )
    assert result.applied["categories"] == 4
    assert structure_counts(url, atelier) == dict.fromkeys(STRUCTURE, 0)
    assert audit_count(url) == 1


# ---------------------------------------------------------------- 12. writes beyond the plan

TOUCH_USERS = """
    CREATE FUNCTION safeops_test_touch() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN UPDATE users SET name = 'touched' WHERE id = (SELECT min(id::text)::uuid
        FROM users); RETURN OLD; END $$;"""

# case -> (table written beyond the plan, DDL, rows it needs for the site).
UNPLANNED_WRITES: dict[str, tuple[str, str, str | None]] = {
    # A table the CMS added later, whose rows go with their author by FK cascade.
    "cascade": (
        "author_notes",
        """
        CREATE TABLE author_notes (id serial PRIMARY KEY,
            author_id uuid NOT NULL REFERENCES authors (id) ON DELETE CASCADE, note text)""",
        "INSERT INTO author_notes (author_id, note) "
        "SELECT id, 'keep me' FROM authors WHERE site_id = %s",
    ),
    # A trigger that edits a kept row when an author goes.
    "trigger": (
        "users",
        TOUCH_USERS
        + """
        CREATE TRIGGER safeops_test_touch AFTER DELETE ON authors
            FOR EACH ROW EXECUTE FUNCTION safeops_test_touch();""",
        None,
    ),
    # The same, deferred to COMMIT: it must fire before the check, not after it.
    "deferred trigger": (
        "users",
        TOUCH_USERS
        + """
        CREATE CONSTRAINT TRIGGER safeops_test_touch AFTER DELETE ON authors
            DEFERRABLE INITIALLY DEFERRED
            FOR EACH ROW EXECUTE FUNCTION safeops_test_touch();""",
        None,
    ),
}


def add_unplanned_writes(url: str, case: str, site_id: str) -> str:
    table, ddl, rows = UNPLANNED_WRITES[case]
    execute(url, ddl)
    if rows:
        execute(url, rows, site_id)
    return table


@pytest.mark.parametrize("case", list(UNPLANNED_WRITES))
def test_writes_beyond_the_plan_roll_the_reset_back(cms: Cms, exports: Path, case: str) -> None:
    from safeops.core.errors import SafeopsError

    url, sites = cms
    atelier = sites["atelier"]
    table = add_unplanned_writes(url, case, atelier)
    tables = [*CMS_TABLES, "author_notes"] if case == "cascade" else CMS_TABLES
    before = table_checksums(url, tables)

    with (
        answer_approval(approve_as()),
        pytest.raises(SafeopsError, match="changed rows it must keep") as refused,
    ):
        reset_site_structure(atelier, dry_run=False)
    assert f"{table} inserted/updated/deleted" in str(refused.value)
    assert "nothing changed" in str(refused.value)
    assert table_checksums(url, tables) == before
    assert audit_count(url) == 0


def test_without_track_counts_the_kept_rows_checksum_still_guards(
    cms: Cms, exports: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With per-table counts switched off, the reset falls back to checksumming the
    site's kept rows (and users) before and after its deletes."""
    from safeops.core.errors import SafeopsError
    from tasks.site import kept_rows

    url, sites = cms
    atelier = sites["atelier"]
    database = url.rsplit("/", 1)[1].split("?")[0]
    execute(url, f'ALTER DATABASE "{database}" SET track_counts = off')
    assert scalar(url, "SHOW track_counts") == "off"
    checksummed: list[str] = []
    real_kept_checksum = kept_rows.kept_checksum

    def kept_checksum(conn: Any, site_id: str) -> str:
        checksummed.append(site_id)
        return real_kept_checksum(conn, site_id)

    monkeypatch.setattr(kept_rows, "kept_checksum", kept_checksum)
    add_unplanned_writes(url, "trigger", atelier)
    before = table_checksums(url, CMS_TABLES)
    with (
        answer_approval(approve_as()) as seen,
        pytest.raises(SafeopsError, match="changed rows it must keep"),
    ):
        reset_site_structure(atelier, dry_run=False)
    assert checksummed == [atelier, atelier]
    assert table_checksums(url, CMS_TABLES) == before
    assert audit_count(url) == 0

    execute(url, "DROP TRIGGER safeops_test_touch ON authors")
    result = reset_site_structure(
        atelier, dry_run=False, approved_plan_hash=seen[0]["plan"].plan_hash, approved_by="alice"
    )
    assert result.applied["authors"] == 2
    assert structure_counts(url, atelier) == dict.fromkeys(STRUCTURE, 0)
    assert audit_count(url) == 1
