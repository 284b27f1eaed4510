"""Restore trusts only snapshots it can trace (issue 15, item 3).

Found by an attack session: a purge's snapshot with three image URLs changed to
another host and its ``bodySha256`` recomputed, saved under another name, was
restored live (the audit check matched by file name), and restoring the genuine
file afterwards did not repair it. Now every snapshot safeops writes is entered in
its database's register, a restore refuses a file it cannot find there unless the
operator says ``--untraced``, and the approval shows where restored images point.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import psycopg
import pytest

from flows.media_purge import purge_product_media
from flows.media_restore import restore_product_media
from flows.media_snapshot import snapshot_product_media
from flows.site_reset import reset_site_structure
from flows.site_restore import restore_site_structure
from safeops.core import events
from safeops.core.errors import SnapshotUntraced, exit_code_for
from tests.cli import cli
from tests.conftest import CMS_TABLES, MEDUSA_TABLES, answer_approval, approve_as
from tests.faults.conftest import checksums, read_snapshot_file, write_snapshot_file
from tests.pg import execute, scalar

EVIL = "https://evil.example/"


def forge(genuine: str, forged: Path) -> None:
    """Three image URLs pointed at another host, checksum and totals kept consistent,
    saved under a name no audit row mentions: what the attack session restored."""
    summary, key, docs = read_snapshot_file(genuine)
    changed = 0
    for n, doc in enumerate(docs):
        product = json.loads(doc)
        for image in product["images"]:
            if changed < 3:
                image["url"] = f"{EVIL}{image['id']}.jpg"
                changed += 1
        docs[n] = json.dumps(product, separators=(",", ":")).encode()
    shutil.copy(genuine, forged)
    write_snapshot_file(str(forged), summary, key, docs)  # recomputes bodySha256


def registered(url: str) -> int:
    return int(scalar(url, "SELECT count(*) FROM safeops.safeops_snapshots"))  # type: ignore[call-overload]


def test_a_forged_snapshot_under_another_name_is_refused_and_the_genuine_one_restores(
    medusa_url: str, exports: Path
) -> None:
    with answer_approval(approve_as()):
        purged = purge_product_media(dry_run=False)
    assert purged.snapshot_uri and registered(medusa_url) >= 1  # the undo point, at least
    forged = exports / "medusa-media-snapshot-20991231T000000Z.json"
    forge(purged.snapshot_uri, forged)
    before = checksums(medusa_url, MEDUSA_TABLES)

    with pytest.raises(SnapshotUntraced, match="not in this database's snapshot register") as exc:
        restore_product_media(str(forged), dry_run=True)
    assert exit_code_for(exc.value) == 3
    run = cli("media", "restore", str(forged), "--live", "--yes")
    assert run.code == 3 and "--untraced" in run.error_line, run
    assert checksums(medusa_url, MEDUSA_TABLES) == before

    genuine = restore_product_media(purged.snapshot_uri, dry_run=True)
    assert "untraced_snapshot" not in genuine.plan.counts
    assert any("localhost:9000" in d for d in genuine.plan.details), genuine.plan.details
    with answer_approval(approve_as()):
        restored = restore_product_media(purged.snapshot_uri, dry_run=False)
    assert restored.applied["images"] == purged.plan.counts["images"]
    assert (
        int(
            scalar(
                medusa_url,
                "SELECT count(*) FROM image WHERE url LIKE %s",  # type: ignore[call-overload]
                EVIL + "%",
            )
        )
        == 0
    )


def test_an_untraced_restore_says_so_in_the_approval_the_plan_and_the_audit_row(
    medusa_url: str, exports: Path
) -> None:
    with answer_approval(approve_as()):
        purged = purge_product_media(dry_run=False)
    assert purged.snapshot_uri
    forged = exports / "medusa-media-snapshot-20991231T000001Z.json"
    forge(purged.snapshot_uri, forged)

    dry = restore_product_media(str(forged), dry_run=True, allow_untraced=True)
    assert dry.plan.counts["untraced_snapshot"] == 1
    assert any(d.startswith("UNTRACED snapshot") for d in dry.plan.details)
    hosts = [d for d in dry.plan.details if d.startswith("restored images point at")]
    assert hosts and "evil.example (3)" in hosts[0], hosts

    with answer_approval(approve_as()) as seen:
        done = restore_product_media(str(forged), dry_run=False, allow_untraced=True)
    what = seen[0]["what"]
    assert any("UNTRACED" in line for line in what) and any(
        "evil.example" in line for line in what
    ), what
    assert done.applied["images"] == purged.plan.counts["images"]
    counts: Any = scalar(
        medusa_url,
        "SELECT counts FROM safeops.safeops_audit "
        "WHERE flow_name = 'restore-product-media' ORDER BY id DESC LIMIT 1",
    )
    assert counts["planned"]["untraced_snapshot"] == 1


def test_a_snapshot_of_a_read_only_target_says_so_and_needs_untraced(
    medusa_url: str, exports: Path
) -> None:
    name = medusa_url.rsplit("/", 1)[1].split("?")[0]
    notices: list[str] = []
    execute(medusa_url, f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    try:
        with events.listening(
            lambda kind, data: notices.append(data["text"]) if kind == "notice" else None
        ):
            ref = snapshot_product_media()
    finally:
        with psycopg.connect(medusa_url, autocommit=True) as conn:
            conn.execute("SET default_transaction_read_only = off")
            conn.execute(f'ALTER DATABASE "{name}" RESET default_transaction_read_only')
    summary, _, _ = read_snapshot_file(ref.uri)
    assert summary["sourceReadOnly"] is True
    assert notices and "untraced" in notices[0]
    assert scalar(medusa_url, "SELECT to_regclass('safeops.safeops_snapshots')") is None

    # One image edited before the purge: its undo point differs from the read-only
    # snapshot (an identical body would be traced by the purge's audit row, rightly).
    execute(
        medusa_url, "UPDATE image SET url = url || '?v=2' WHERE id = (SELECT min(id) FROM image)"
    )
    with answer_approval(approve_as()):
        purge_product_media(dry_run=False)
    with pytest.raises(SnapshotUntraced):
        restore_product_media(ref.uri, dry_run=True)
    plan = restore_product_media(ref.uri, dry_run=True, allow_untraced=True).plan
    assert plan.counts["untraced_snapshot"] == 1 and plan.counts["images"] > 0


def test_an_undo_point_written_before_the_register_is_traced_by_its_audit_row(
    medusa_url: str, exports: Path
) -> None:
    with answer_approval(approve_as()):
        purged = purge_product_media(dry_run=False)
    assert purged.snapshot_uri
    execute(medusa_url, "DELETE FROM safeops.safeops_snapshots")  # as before the register
    plan = restore_product_media(purged.snapshot_uri, dry_run=True).plan
    assert "untraced_snapshot" not in plan.counts and plan.counts["images"] > 0


def test_site_restore_refuses_a_snapshot_missing_from_the_register_unless_untraced(
    cms: tuple[str, dict[str, str]], exports: Path
) -> None:
    url, sites = cms
    with answer_approval(approve_as()):
        reset = reset_site_structure(sites["atelier"], dry_run=False)
    assert reset.snapshot_uri
    copy = exports / Path(reset.snapshot_uri).name.replace(".json", "-copy.json")
    shutil.copy(reset.snapshot_uri, copy)  # the same bytes under another name: still ours
    assert restore_site_structure(str(copy)).plan.counts["categories"] > 0

    # Neither in the register nor recorded by the reset's audit row: untraced.
    execute(url, "DELETE FROM safeops.safeops_snapshots")
    execute(url, "DELETE FROM safeops.safeops_audit")
    before = checksums(url, CMS_TABLES)
    with pytest.raises(SnapshotUntraced):
        restore_site_structure(reset.snapshot_uri, dry_run=True)
    with answer_approval(approve_as()) as seen:
        done = restore_site_structure(reset.snapshot_uri, dry_run=False, allow_untraced=True)
    assert any("UNTRACED" in line for line in seen[0]["what"])
    assert done.applied and checksums(url, CMS_TABLES) != before
