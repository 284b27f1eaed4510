"""Rows of other sites that point at what a reset deletes: the write-count check on
``content`` (which the one-UPDATE release of posts changed) still refuses a reset that
would change one, and no new reference can appear while the apply holds its locks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from safeops.core.errors import SafeopsError
from tests.conftest import CMS_TABLES
from tests.pg import audit_rows, execute, scalar, table_checksums

Cms = tuple[str, dict[str, str]]


def _first(url: str, sql: str, *params: object) -> str:
    return str(scalar(url, sql, *params))


def _saved_reset(site: str) -> Any:
    from flows.site_reset import reset_site_structure

    dry = reset_site_structure(site)
    assert dry.plan is not None
    return lambda: reset_site_structure(
        site, dry_run=False, approved_plan_hash=dry.plan.plan_hash, approved_by="bob"
    )


def test_a_page_of_another_site_written_by_one_of_its_authors_refuses_the_reset(
    cms: Cms, exports: Any
) -> None:
    """The release of posts touches posts only: a page of another site that names one of
    the reset site's authors would be changed by the FK action, and the per-table write
    count of ``content`` (one update per released post, no more) refuses it."""
    url, sites = cms
    site, other = sites["atelier"], sites["gazette"]
    author = _first(url, "SELECT id FROM authors WHERE site_id = %s ORDER BY id LIMIT 1", site)
    execute(
        url,
        "INSERT INTO content (site_id, type, status, title, slug, author_id) "
        "VALUES (%s, 'page', 'draft', 'Guest page', 'guest-page', %s)",
        other,
        author,
    )
    apply = _saved_reset(site)
    before = table_checksums(url, CMS_TABLES)
    with pytest.raises(SafeopsError, match=r"content inserted/updated/deleted 0/\d+/\d+"):
        apply()
    assert table_checksums(url, CMS_TABLES) == before
    assert audit_rows(url) == []


# A row of another site that would reference what the reset deletes, inserted by
# another session while the apply holds its locks.
NEW_REFERENCES: dict[str, str] = {
    "post by one of its authors": (
        "INSERT INTO content (site_id, type, status, title, slug, author_id) "
        "SELECT %(other)s, 'post', 'draft', 'Late', 'late-' || gen_random_uuid(), id "
        "FROM authors WHERE site_id = %(site)s LIMIT 1"
    ),
    "post of one of its content types": (
        "INSERT INTO content (site_id, type, status, title, slug, content_type_id) "
        "SELECT %(other)s, 'post', 'draft', 'Late', 'late-' || gen_random_uuid(), id "
        "FROM content_type WHERE site_id = %(site)s LIMIT 1"
    ),
    "tag under one of its categories": (
        "INSERT INTO terms (site_id, type, name, slug, parent_id) "
        "SELECT %(other)s, 'tag', 'Late', 'late-' || gen_random_uuid(), id "
        "FROM terms WHERE site_id = %(site)s AND type = 'category' LIMIT 1"
    ),
    "link of a post to one of its categories": (
        "INSERT INTO content_terms (content_id, term_id) "
        "SELECT c.id, t.id FROM content c, terms t WHERE c.site_id = %(other)s "
        "AND t.site_id = %(site)s AND t.type = 'category' LIMIT 1"
    ),
}


@pytest.mark.parametrize("reference", sorted(NEW_REFERENCES))
def test_no_new_reference_to_its_rows_can_appear_during_the_apply(
    cms: Cms, exports: Any, monkeypatch: pytest.MonkeyPatch, reference: str
) -> None:
    """Between the apply's digests and its deletes, another session cannot add a row that
    points at one of the site's categories, authors or content types: it waits for the
    reset (here: gives up after 0.3 s), so no ON DELETE action can reach a row of another
    site, whether or not the server counts writes. The reset then commits as approved."""
    import tasks.site.reset as reset

    url, sites = cms
    site, other = sites["atelier"], sites["gazette"]
    apply = _saved_reset(site)
    outcomes: list[str] = []
    real: Callable[..., Any] = reset.lock_changed_rows

    def then_try_to_reference(conn: Any, site_id: str) -> Any:
        out = real(conn, site_id)
        with psycopg.connect(url, autocommit=True) as other_session:
            other_session.execute("SET lock_timeout = '300ms'")
            try:
                other_session.execute(NEW_REFERENCES[reference], {"site": site, "other": other})
                outcomes.append("inserted")
            except psycopg.errors.LockNotAvailable:
                outcomes.append("waited")
        return out

    monkeypatch.setattr(reset, "lock_changed_rows", then_try_to_reference)
    before = table_checksums(url, ["users", "site_settings", "domains", "media"])
    result = apply()
    assert outcomes == ["waited"]
    assert result.applied["authors"] > 0 and len(audit_rows(url)) == 1
    assert table_checksums(url, ["users", "site_settings", "domains", "media"]) == before
    late = "SELECT (SELECT count(*) FROM content WHERE slug LIKE 'late-%%') + "
    late += "(SELECT count(*) FROM terms WHERE slug LIKE 'late-%%')"
    assert scalar(url, late) == 0
