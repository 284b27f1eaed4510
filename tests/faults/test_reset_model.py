"""The site fault tests judge the database against an independent model of a reset
(``conftest.SITE_RESET_MODEL``, written from the README's CMS schema contract, not from
the product's SQL). These check the model itself: it agrees with the product's delete
on every seeded site, and a delete that goes one row too far is caught as neither the
state before nor the applied one."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text

from tests.conftest import CMS_TABLES
from tests.faults.conftest import applied_state, reset_model, site_states

Cms = tuple[str, dict[str, str]]


def test_the_model_and_the_products_delete_leave_the_same_tables_on_every_seeded_site(
    cms: Cms,
) -> None:
    from tasks.site.reset import delete_structure

    url, sites = cms
    for slug, site in sites.items():

        def product(conn: Any, site: str = site) -> None:
            delete_structure(conn, site)

        model = applied_state(url, CMS_TABLES, reset_model(site))
        assert applied_state(url, CMS_TABLES, product) == model, slug


def test_a_reset_that_also_deletes_a_posts_seo_meta_is_caught_in_between(cms: Cms) -> None:
    from safeops.core.db import engine_for, transaction
    from tasks.site.reset import delete_structure

    url, sites = cms
    atelier = sites["atelier"]
    states = site_states(url, atelier)
    engine = engine_for("cms")
    try:
        with transaction(engine) as conn:
            delete_structure(conn, atelier)
            gone = conn.execute(
                text(
                    "DELETE FROM seo_meta WHERE entity_type = 'content' AND entity_id = "
                    "(SELECT c.id FROM content c JOIN seo_meta s ON s.entity_type = 'content' "
                    "AND s.entity_id = c.id WHERE c.site_id = :site AND c.type = 'post' "
                    "ORDER BY c.id LIMIT 1)"
                ),
                {"site": atelier},
            ).rowcount
    finally:
        engine.dispose()
    assert gone == 1
    with pytest.raises(AssertionError, match="'seo_meta': 'neither'"):
        states.now()
