"""A restore loads its snapshot as few times as its safety allows (issue 13, item 3).

A live run with a saved plan has no plan step: one transaction loads the file,
locks, derives the plan, refuses unless it is the saved one, inserts, counts
what is left and writes the audit row. A run that pauses plans in a read-only
view first and re-derives the plan under the apply's lock: any change between
the approval and the apply is refused as drift with nothing changed, and a fault
in the middle of the apply leaves nothing half done. Real PostgreSQL, the real
flows in-process, assertions on rows, audit rows and Prefect's task runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from flows.media_purge import purge_product_media
from flows.media_restore import restore_product_media
from safeops.core import events
from safeops.core.errors import DriftDetected, PlanMismatch
from tests.conftest import MEDUSA_TABLES, answer_approval, approve_as
from tests.faults.conftest import read_snapshot_file, task_runs
from tests.pg import audit_rows, execute, scalar, table_checksums

RESTORES = "restore-product-media"


def purge_live() -> str:
    with answer_approval(approve_as()):
        uri = purge_product_media(dry_run=False).snapshot_uri
    assert uri
    return uri


def some_product_with_a_thumbnail_in(uri: str) -> str:
    """A product whose thumbnail the purge cleared (the snapshot will set it again)."""
    _, _, docs = read_snapshot_file(uri)
    return next(str(d["id"]) for d in map(json.loads, docs) if d["thumbnail"])


def test_a_saved_plan_restores_with_one_task_and_one_plan(medusa_url: str, exports: Path) -> None:
    before = table_checksums(medusa_url, MEDUSA_TABLES)
    uri = purge_live()
    purged = table_checksums(medusa_url, MEDUSA_TABLES)

    dry = restore_product_media(uri)  # dry run: one read-only view, nothing written
    assert dry.dry_run and dry.plan.counts["images"] > 0
    assert table_checksums(medusa_url, MEDUSA_TABLES) == purged
    assert len(audit_rows(medusa_url, RESTORES)) == 0

    plans: list[Any] = []

    def listener(kind: str, data: dict[str, Any]) -> None:
        if kind == "plan":
            plans.append(data["plan"])

    with events.listening(listener):
        state = restore_product_media(
            uri,
            dry_run=False,
            approved_plan_hash=dry.plan.plan_hash,
            approved_by="bob",
            return_state=True,
        )
    result = state.result()
    assert result.applied["images"] == dry.plan.counts["images"]
    assert result.approval and result.approval.via == "saved-plan"
    assert result.approval.approver == "bob"
    assert result.after_totals == {
        "left_images": 0,
        "left_variant_links": 0,
        "left_product_thumbnails": 0,
        "left_variant_thumbnails": 0,
    }
    # The plan derived under the apply's lock was shown once, and is the saved one.
    assert [p.plan_hash for p in plans] == [dry.plan.plan_hash]
    assert result.plan.counts == dry.plan.counts
    for table in ("image", "product_variant_product_image"):
        assert table_checksums(medusa_url, MEDUSA_TABLES)[table] == before[table], table
    ((_, _, plan_hash, counts),) = audit_rows(medusa_url, RESTORES)
    assert plan_hash == dry.plan.plan_hash
    assert isinstance(counts, dict) and counts["applied"] == result.applied

    run_id = state.state_details.flow_run_id
    assert run_id is not None
    assert len(task_runs(run_id, "apply-media-restore")) == 1
    assert task_runs(run_id, "plan-media-restore", timeout_s=2) == []


def test_a_saved_plan_the_catalog_moved_away_from_is_refused_with_nothing_changed(
    medusa_url: str, exports: Path
) -> None:
    uri = purge_live()
    dry = restore_product_media(uri)
    product = some_product_with_a_thumbnail_in(uri)
    # Since the dry run, someone set a thumbnail the snapshot would have set.
    execute(
        medusa_url,
        "UPDATE product SET thumbnail = 'http://localhost:9000/new.webp' WHERE id = %s",
        product,
    )
    moved = table_checksums(medusa_url, MEDUSA_TABLES)
    with pytest.raises(PlanMismatch) as refused:
        restore_product_media(
            uri, dry_run=False, approved_plan_hash=dry.plan.plan_hash, approved_by="bob"
        )
    assert dry.plan.plan_hash in str(refused.value) and "product_thumbnails_kept=1" in str(
        refused.value
    )
    assert table_checksums(medusa_url, MEDUSA_TABLES) == moved
    assert audit_rows(medusa_url, RESTORES) == []


def test_a_change_between_approval_and_apply_is_refused_as_drift_with_nothing_changed(
    medusa_url: str, exports: Path
) -> None:
    uri = purge_live()
    product = some_product_with_a_thumbnail_in(uri)
    during: dict[str, str] = {}

    def change_then_approve(data: dict[str, Any]) -> dict[str, Any]:
        execute(
            medusa_url,
            "UPDATE product SET thumbnail = 'http://localhost:9000/late.webp' WHERE id = %s",
            product,
        )
        during.update(table_checksums(medusa_url, MEDUSA_TABLES))
        return approve_as()(data)

    with answer_approval(change_then_approve) as seen, pytest.raises(DriftDetected) as drift:
        restore_product_media(uri, dry_run=False)
    assert len(seen) == 1
    assert "changed since the restore was planned" in str(drift.value)
    assert "nothing changed" in str(drift.value)
    assert table_checksums(medusa_url, MEDUSA_TABLES) == during
    assert audit_rows(medusa_url, RESTORES) == []


def test_a_fault_mid_apply_leaves_nothing_half_done_and_a_rerun_restores(
    medusa_url: str, exports: Path
) -> None:
    before = table_checksums(medusa_url, MEDUSA_TABLES)
    uri = purge_live()
    purged = table_checksums(medusa_url, MEDUSA_TABLES)
    # The thumbnails go back after every image and link row was inserted.
    execute(
        medusa_url,
        """
        CREATE FUNCTION safeops_test_fault() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'injected fault: thumbnail update refused'; END $$;
        CREATE TRIGGER safeops_test_fault BEFORE UPDATE OF thumbnail ON product_variant
            FOR EACH ROW EXECUTE FUNCTION safeops_test_fault();""",
    )
    with answer_approval(approve_as()) as seen:
        state = restore_product_media(uri, dry_run=False, return_state=True)
    assert len(seen) == 1 and state.is_failed()
    assert "injected fault" in str(state.message) + repr(state.result(raise_on_failure=False))
    assert table_checksums(medusa_url, MEDUSA_TABLES) == purged
    assert scalar(medusa_url, "SELECT count(*) FROM image") == 0
    assert audit_rows(medusa_url, RESTORES) == []

    execute(medusa_url, "DROP TRIGGER safeops_test_fault ON product_variant")
    with answer_approval(approve_as()):
        restored = restore_product_media(uri, dry_run=False)
    assert restored.applied["variant_thumbnails"] > 0
    after = table_checksums(medusa_url, MEDUSA_TABLES)
    for table in ("image", "product_variant_product_image"):
        assert after[table] == before[table], table
    assert len(audit_rows(medusa_url, RESTORES)) == 1
