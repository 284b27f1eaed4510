"""Which site a run is about and whether it may be reset: the site id (only a
canonical UUID reaches SQL), the site's row, the published-posts guard, and the
``check-site-reset`` task; plus the id of the flow run asking, for the audit."""

from __future__ import annotations

from typing import Any

from prefect import task
from sqlalchemy import Connection, text

from safeops.core.db import engine_for, transaction
from safeops.core.errors import BadInput
from safeops.core.site_id import parse_site_id as parse_site_id  # re-exported for the flows
from tasks.common.retry import TRANSIENT_RETRIES


def site_row(conn: Connection, site_id: str, lock: bool = False) -> tuple[str, str] | None:
    """(slug, name) of the site; FOR UPDATE also blocks new content for it (FK key-share)."""
    row = conn.execute(
        text(
            "SELECT slug, name FROM sites WHERE id = CAST(:site AS uuid)"
            + (" FOR UPDATE" if lock else "")
        ),
        {"site": site_id},
    ).one_or_none()
    return (row[0], row[1]) if row else None


def published_posts(conn: Connection, site_id: str) -> int:
    return int(
        conn.execute(
            text(
                "SELECT count(*) FROM content WHERE site_id = :site AND type = 'post' "
                "AND status = 'published'"
            ),
            {"site": site_id},
        ).scalar_one()
    )


def require_site(conn: Connection, site_id: str, lock: bool = False) -> tuple[str, str]:
    row = site_row(conn, site_id, lock=lock)
    if row is None:
        raise BadInput(f"Unknown site {site_id}: no such site in the CMS database.")
    return row


def eligibility(published: int) -> dict[str, Any]:
    if published:
        reason = (
            f"Reset impossible: {published} published post(s); only sites without "
            "published content can be reset"
        )
    else:
        reason = "Reset allowed: the site has 0 published posts"
    return {"canReset": published == 0, "publishedCount": published, "reason": reason}


@task(name="check-site-reset", **TRANSIENT_RETRIES)
def check_site(target: str, site_id: str) -> dict[str, Any]:
    with transaction(engine_for(target), read_only=True) as conn:
        slug, _ = require_site(conn, site_id)
        return {**eligibility(published_posts(conn, site_id)), "siteSlug": slug}
