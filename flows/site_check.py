"""May this CMS site's structure be reset? Only while it has zero published posts.

A read-only answer with the numbers (published, draft, scheduled posts), as a table
artifact; `reset-site-structure` asks the same question again under its lock.

Run:  uv run safeops site check <site-id>
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from safeops.core.settings import validate_target
from tasks.site.check import check_site, parse_site_id


@flow(name="check-site-reset")
def check_site_reset(site_id: str, target: str = "cms") -> dict[str, Any]:
    """Can this site's structure be reset? Only with zero published posts.

    Args:
        site_id: The site's UUID.
        target: Which database: 'cms' reads CMS_DATABASE_URL or the Prefect Secret block
            'cms-database-url'. A name, never a URL.
    """
    validate_target(target)
    verdict = check_site(target, parse_site_id(site_id))
    create_table_artifact(
        [verdict], key="site-reset-check", description=f"reset eligibility of site {site_id}"
    )
    get_run_logger().info(verdict["reason"])
    return verdict
