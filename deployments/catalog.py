"""Every safeops deployment, defined once.

``prefect.yaml`` (for ``prefect deploy --all`` and workers) is rendered from
this list by ``python -m deployments.render``, and ``serve.py`` serves the same
list, so the two ways of running can never disagree on names, parameters or
schedules. A test fails when prefect.yaml is out of date.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from safeops.core.settings import get_settings

WORK_POOL = "safeops"
NIGHTLY_CRON = get_settings().nightly_cron
NIGHTLY_TIMEZONE = get_settings().nightly_timezone


@dataclass(frozen=True)
class Spec:
    entrypoint: str  # path/to/file.py:function
    name: str
    description: str
    tags: tuple[str, ...]
    parameters: dict[str, Any] = field(default_factory=dict)
    cron: str | None = None

    @property
    def flow_name(self) -> str:
        return self.entrypoint.split(":")[1].replace("_", "-")


DEPLOYMENTS: tuple[Spec, ...] = (
    Spec(
        "flows/media_purge.py:purge_product_media",
        "manual",
        "Purge every image reference of the Medusa catalog (MinIO files stay). Dry run by "
        "default; a live run snapshots, pauses for approval and verifies 0 images after.",
        ("safeops", "medusa", "destructive"),
        {"target": "medusa", "dry_run": True},
    ),
    Spec(
        "flows/media_restore.py:restore_product_media",
        "manual",
        "Restore image references from a media snapshot. Dry run by default.",
        ("safeops", "medusa", "destructive"),
        {"target": "medusa", "dry_run": True},
    ),
    Spec(
        "flows/media_verify.py:verify_product_media_snapshot",
        "manual",
        "Check a media snapshot: format, checksum, totals, source, live ids, objects.",
        ("safeops", "medusa", "read-only"),
        {"target": "medusa", "check_objects": False},
    ),
    Spec(
        "flows/media_snapshot.py:snapshot_product_media",
        "nightly",
        "Nightly media snapshot (read-only) with retention: keeps the newest 14, never one "
        "referenced by an audit row of the last 30 days.",
        ("safeops", "medusa", "read-only", "scheduled"),
        {"target": "medusa", "keep": 14},
        cron=NIGHTLY_CRON,
    ),
    Spec(
        "flows/media_refs.py:migrate_product_media_refs",
        "manual",
        "Copy product files to timestamp+UUID keys in MinIO and write "
        "product.metadata.media.refs (ImageRefs). Dry run by default; sources never change.",
        ("safeops", "medusa", "minio"),
        {"target": "medusa", "dry_run": True},
    ),
    Spec(
        "flows/site_check.py:check_site_reset",
        "manual",
        "Can this CMS site's structure be reset? Only with zero published posts.",
        ("safeops", "cms", "read-only"),
        {"target": "cms"},
    ),
    Spec(
        "flows/site_reset.py:reset_site_structure",
        "manual",
        "Reset one CMS site's blueprint structure (categories, authors, pages, content types, "
        "their SEO meta). Dry run by default; refused while the site has published posts.",
        ("safeops", "cms", "destructive"),
        {"target": "cms", "dry_run": True},
    ),
    Spec(
        "flows/site_restore.py:restore_site_structure",
        "manual",
        "Undo a site-structure reset from its snapshot. Dry run by default.",
        ("safeops", "cms", "destructive"),
        {"target": "cms", "dry_run": True},
    ),
)


def as_prefect_yaml() -> dict[str, Any]:
    deployments = []
    for spec in DEPLOYMENTS:
        entry: dict[str, Any] = {
            "name": spec.name,
            "entrypoint": spec.entrypoint,
            "description": spec.description,
            "tags": list(spec.tags),
            "parameters": spec.parameters,
            "work_pool": {"name": WORK_POOL, "work_queue_name": "default"},
        }
        if spec.cron:
            entry["schedules"] = [{"cron": spec.cron, "timezone": NIGHTLY_TIMEZONE, "active": True}]
        deployments.append(entry)
    return {
        "name": "safeops",
        "prefect-version": "3.8.8",
        "build": None,
        "push": None,
        # null: `prefect deploy` records a set_working_directory step with the folder it
        # ran in, so workers run the code from that folder; no git access is needed.
        "pull": None,
        "deployments": deployments,
    }
