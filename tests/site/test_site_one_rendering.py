"""The site reset renders its undo point once: the plan comes from the same rendering
of each row the file holds, and the verify proves the stored file is those bytes
instead of loading it back. What must hold for that to be as safe as the reload."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from safeops.core.errors import SnapshotInvalid
from tests.faults.conftest import read_snapshot_file, write_snapshot_file
from tests.pg import execute, scalar

Cms = tuple[str, dict[str, str]]

# Rows whose rendering is easy to get wrong: quotes, backslashes, a line break and
# non-ASCII text in a page, an SEO row of it, a category with a description.
AWKWARD_PAGE_SQL = """
INSERT INTO content (id, site_id, type, status, title, slug, body)
VALUES ('6d1f4c1e-0000-4000-8000-00000000aa01', %s, 'page', 'draft',
        'Quote " and \\ back', 'awkward', E'line one\\nline two — ünïcødé ✓')"""
AWKWARD_SEO_SQL = """
INSERT INTO seo_meta (site_id, entity_type, entity_id, title, description)
VALUES (%s, 'content', '6d1f4c1e-0000-4000-8000-00000000aa01', E'tab\\there', 'emoji 🚀')"""


def _awkward_site(url: str, site: str) -> None:
    execute(url, AWKWARD_PAGE_SQL, site)
    execute(url, AWKWARD_SEO_SQL, site)


def test_the_snapshots_plan_is_the_live_plan_and_the_plan_of_the_file_loaded_back(
    cms: Cms, exports: Path
) -> None:
    """Three derivations of one plan agree: from the snapshot's renderings, from the live
    rows (a saved plan of a dry run), and from the file loaded back into temp tables
    (what a restore will re-derive): the undo point is restorable as planned."""
    from safeops.core.db import engine_for, read_snapshot
    from tasks.site.snapshot import snapshot_site, verify_site_snapshot
    from tasks.site.structure import reset_plan

    url, sites = cms
    site = sites["atelier"]
    _awkward_site(url, site)
    ref, plan = snapshot_site.fn("cms", site, None)
    with read_snapshot(engine_for("cms")) as conn:
        live = reset_plan(conn, site, "cms")
    assert plan.plan_hash == live.plan_hash
    assert plan.counts == live.counts and plan.counts["pages"] >= 1
    assert ref.plan is not None and ref.plan.plan_hash == plan.plan_hash

    loaded = verify_site_snapshot.fn("cms", ref.uri, plan.plan_hash)  # the reload path
    fast = verify_site_snapshot.fn("cms", ref.uri, plan.plan_hash, written=ref)
    assert loaded.ok and fast.ok
    assert fast.totals == loaded.totals == ref.totals
    assert fast.file_sha256 == loaded.file_sha256
    assert fast.plan_hash == plan.plan_hash


def test_verify_against_its_view_refuses_a_file_that_is_not_what_the_view_wrote(
    cms: Cms, exports: Path
) -> None:
    from tasks.site.snapshot import snapshot_site, verify_site_snapshot

    _url, sites = cms
    ref, plan = snapshot_site.fn("cms", sites["atelier"], None)
    assert ref.summary_sha256  # what the register records, and read_back holds it to
    path = Path(ref.uri)
    original = path.read_bytes()

    path.write_bytes(original.replace(b'"title"', b'"titel"', 1))  # checksum left as it was
    with pytest.raises(SnapshotInvalid, match="checksum"):
        verify_site_snapshot.fn("cms", ref.uri, plan.plan_hash, written=ref)

    path.write_bytes(original)
    summary, key, docs = read_snapshot_file(path)
    doc = json.loads(docs[0])
    doc["row"]["id"] = "00000000-0000-4000-8000-000000000bad"
    docs[0] = json.dumps(doc).encode()
    write_snapshot_file(path, summary, key, docs)  # a careful forger: checksum recomputed
    with pytest.raises(SnapshotInvalid, match="the snapshot wrote"):
        verify_site_snapshot.fn("cms", ref.uri, plan.plan_hash, written=ref)

    # The summary alone edited, the body intact: its plan, its totals, its digest version
    # (which would make every later restore re-derive another hash), its site.
    path.write_bytes(original)
    summary, key, docs = read_snapshot_file(path)
    for edit in (
        {"planHash": "0" * 64},
        {"total_pages": summary["total_pages"] + 1},
        {"planDigest": 2},
        {"siteId": sites["gazette"]},
    ):
        path.write_bytes(original)
        write_snapshot_file(path, {**summary, **edit}, key, docs)
        with pytest.raises(SnapshotInvalid, match="failed the summary check"):
            verify_site_snapshot.fn("cms", ref.uri, plan.plan_hash, written=ref)

    path.write_bytes(original)
    assert verify_site_snapshot.fn("cms", ref.uri, plan.plan_hash, written=ref).ok


def test_posts_losing_author_and_type_are_written_once_and_nothing_else(
    cms: Cms, exports: Path
) -> None:
    """The apply releases the posts in one UPDATE before their author and content type
    go: each post is written once (the table-write check demands exactly that), and
    the posts keep everything but the two references."""
    from flows.site_reset import reset_site_structure

    url, sites = cms
    site = sites["atelier"]
    _awkward_site(url, site)
    both = int(
        scalar(  # type: ignore[call-overload]
            url,
            "SELECT count(*) FROM content WHERE type = 'post' AND site_id = %s "
            "AND author_id IS NOT NULL AND content_type_id IS NOT NULL",
            site,
        )
    )
    assert both > 0  # the seed has posts that lose both
    titles = "SELECT md5(string_agg(id::text || title || status, ',' ORDER BY id)) FROM content "
    posts_before = scalar(url, titles + "WHERE type = 'post'")
    dry = reset_site_structure(site)
    assert dry.plan is not None
    result = reset_site_structure(
        site, dry_run=False, approved_plan_hash=dry.plan.plan_hash, approved_by="bob"
    )
    assert result.applied["pages"] == dry.plan.counts["pages"]
    assert scalar(url, titles + "WHERE type = 'post'") == posts_before
    assert (
        scalar(
            url,
            "SELECT count(*) FROM content WHERE type = 'post' AND site_id = %s "
            "AND (author_id IS NOT NULL OR content_type_id IS NOT NULL)",
            site,
        )
        == 0
    )
    assert scalar(url, "SELECT count(*) FROM content WHERE slug = 'awkward'") == 0
