"""A plan reviewed on one database never approves another (issue 15, item 4).

Two databases seeded identically hold equal catalogs and equal sites, row for row;
before plans were bound to their database's fingerprint they gave the same plan
hash, so a dry run reviewed on staging approved the same purge of production.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.media_purge import purge_product_media
from flows.site_reset import reset_site_structure
from safeops.core.errors import PlanMismatch
from tests.conftest import CMS_TABLES, MEDUSA_TABLES
from tests.pg import fresh_database, table_checksums


@pytest.fixture()
def twin_medusa(pg_admin: str, medusa_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A byte-for-byte copy of ``medusa_url``'s database (CREATE DATABASE … TEMPLATE):
    target ``twin``."""
    name = medusa_url.rsplit("/", 1)[1].split("?")[0]
    with fresh_database(pg_admin, template=name) as url:
        monkeypatch.setenv("TWIN_DATABASE_URL", url)
        yield url


def test_a_purge_plan_reviewed_on_a_twin_database_is_refused_on_this_one(
    medusa_url: str, twin_medusa: str, exports: Path
) -> None:
    assert table_checksums(medusa_url, MEDUSA_TABLES) == table_checksums(twin_medusa, MEDUSA_TABLES)
    reviewed = purge_product_media(target="twin").plan
    here = purge_product_media(target="medusa").plan
    assert reviewed.counts == here.counts
    assert reviewed.plan_hash != here.plan_hash

    before = table_checksums(medusa_url, MEDUSA_TABLES)
    with pytest.raises(PlanMismatch, match="does not match"):
        purge_product_media(
            target="medusa",
            dry_run=False,
            approved_plan_hash=reviewed.plan_hash,
            approved_by="alice",
        )
    assert table_checksums(medusa_url, MEDUSA_TABLES) == before
    # The same hash still approves the database it was reviewed on.
    done = purge_product_media(
        target="twin", dry_run=False, approved_plan_hash=reviewed.plan_hash, approved_by="alice"
    )
    assert done.applied["images"] == reviewed.counts["images"]


def test_a_site_reset_plan_reviewed_on_a_copy_is_refused_on_the_original(
    pg_admin: str,
    cms: tuple[str, dict[str, str]],
    cms_template: tuple[str, dict[str, str]],
    exports: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, sites = cms
    with fresh_database(pg_admin, template=cms_template[0]) as copy:
        monkeypatch.setenv("CMS_COPY_DATABASE_URL", copy)
        assert table_checksums(url, CMS_TABLES) == table_checksums(copy, CMS_TABLES)
        reviewed = reset_site_structure(sites["atelier"], target="cms-copy").plan
        here = reset_site_structure(sites["atelier"], target="cms").plan
        assert reviewed.counts == here.counts and reviewed.plan_hash != here.plan_hash

        before = table_checksums(url, CMS_TABLES)
        with pytest.raises(PlanMismatch, match="does not match"):
            reset_site_structure(
                sites["atelier"],
                target="cms",
                dry_run=False,
                approved_plan_hash=reviewed.plan_hash,
                approved_by="alice",
            )
        assert table_checksums(url, CMS_TABLES) == before
