"""The site-structure reset, end to end, against real PostgreSQL and Prefect."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.site_check import check_site_reset
from flows.site_reset import reset_site_structure
from flows.site_restore import restore_site_structure
from safeops.core.errors import ResetNotAllowed
from tests.conftest import CMS_TABLES, answer_approval, approve_as
from tests.pg import scalar, table_checksums


def test_reset_then_restore_gives_identical_tables(
    cms: tuple[str, dict[str, str]], exports: Path
) -> None:
    url, sites = cms
    site = sites["atelier"]
    before = table_checksums(url, CMS_TABLES)
    assert check_site_reset(site)["canReset"] is True

    with answer_approval(approve_as()) as seen:
        result = reset_site_structure(site, dry_run=False)
    assert seen[0]["expected_confirmation"] == "atelier"
    assert result.applied["categories"] == 4 and result.applied["authors"] == 2
    assert result.applied["pages"] == 3 and result.applied["content_types"] == 2
    assert (
        scalar(url, "SELECT count(*) FROM terms WHERE site_id = %s AND type = 'category'", site)
        == 0
    )
    assert scalar(url, "SELECT setup_status FROM sites WHERE id = %s", site) == "draft"

    with answer_approval(approve_as()):
        restored = restore_site_structure(str(result.snapshot_uri), dry_run=False)
    assert restored.applied["categories"] == 4
    assert table_checksums(url, CMS_TABLES) == before


def test_site_with_published_posts_is_refused(
    cms: tuple[str, dict[str, str]], exports: Path
) -> None:
    url, sites = cms
    before = table_checksums(url, CMS_TABLES)
    verdict = check_site_reset(sites["gazette"])
    assert verdict == {
        "canReset": False,
        "publishedCount": 2,
        "siteSlug": "gazette",
        "reason": "Reset impossible: 2 published post(s); only sites without "
        "published content can be reset",
    }
    with pytest.raises(ResetNotAllowed, match="2 published"):
        reset_site_structure(sites["gazette"], dry_run=False)
    assert table_checksums(url, CMS_TABLES) == before
