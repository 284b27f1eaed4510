"""What keeps the media purge and restore from losing data: dry runs, approvals,
drift, faults mid-apply, re-runs, restore rules, artifacts, secrets.

Every test runs the real flows in-process against a fresh PostgreSQL database
and asserts on rows (table checksums), flow-run states and artifacts.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest

from flows.media_purge import purge_product_media
from flows.media_restore import restore_product_media
from safeops.core import events
from safeops.core.errors import ApprovalDenied, ApprovalTimedOut, DriftDetected
from safeops.core.models import RunResult
from tests.conftest import MEDUSA_TABLES, answer_approval, approve_as
from tests.media.counts import MEDIA_COUNT_SQL, media_counts
from tests.pg import LOCAL, STAMPS, audit_count, execute, scalar, table_checksums


def count(url: str, sql: str, *params: object) -> int:
    return int(scalar(url, sql, *params))  # type: ignore[call-overload]


def purge_live(approver: str = "alice") -> RunResult:
    with answer_approval(approve_as(approver)) as seen:
        result = purge_product_media(dry_run=False)
    assert len(seen) == 1
    return result


def restore_live(uri: str) -> RunResult:
    with answer_approval(approve_as()):
        return restore_product_media(uri, dry_run=False)


@contextmanager
def watch_approvals() -> Iterator[list[dict[str, Any]]]:
    """Record approval requests without answering them (nobody is at the keyboard)."""
    seen: list[dict[str, Any]] = []

    def listener(kind: str, data: dict[str, Any]) -> None:
        if kind == "approval":
            seen.append(data)

    with events.listening(listener):
        yield seen


def read_flow_run(run_id: UUID) -> Any:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        (run,) = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
        )
    return run


def read_artifacts(run_ids: list[UUID]) -> list[Any]:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=run_ids))
        )


def product_thumbnails(url: str) -> dict[str, str]:
    with psycopg.connect(url) as conn:
        return dict(
            conn.execute("SELECT id, thumbnail FROM product WHERE thumbnail IS NOT NULL").fetchall()
        )


def some_product_with_images(url: str, offset: int = 0) -> str:
    return str(
        scalar(
            url,
            "SELECT product_id FROM image GROUP BY product_id "
            "HAVING count(*) >= 2 ORDER BY product_id OFFSET %s LIMIT 1",
            offset,
        )
    )


# ---------------------------------------------------------------- dry run


def test_dry_run_changes_nothing_and_plan_hash_tracks_the_state(
    medusa_url: str, exports: Path
) -> None:
    before = table_checksums(medusa_url, MEDUSA_TABLES)
    first = purge_product_media()  # dry run is the default
    second = purge_product_media(dry_run=True)

    assert first.dry_run and not first.applied
    assert table_checksums(medusa_url, MEDUSA_TABLES) == before
    assert first.snapshot_uri and Path(first.snapshot_uri).is_file()
    assert second.snapshot_uri and Path(second.snapshot_uri).is_file()
    assert first.snapshot_uri != second.snapshot_uri  # never overwritten
    assert first.plan.counts == media_counts(medusa_url)
    assert first.plan.plan_hash == second.plan.plan_hash

    product = some_product_with_images(medusa_url)
    execute(
        medusa_url,
        "INSERT INTO image (id, url, rank, product_id) VALUES "
        "('img_01DRYRUNADDED0000000000000', 'http://x/y.jpg', 9, %s)",
        product,
    )
    third = purge_product_media()
    assert third.plan.counts["images"] == first.plan.counts["images"] + 1
    assert third.plan.plan_hash != first.plan.plan_hash


# ---------------------------------------------------------------- approval refusals


@pytest.mark.parametrize(
    "answer",
    [
        {
            "approver": "bob",
            "reason": "not during the sale",
            "confirmation": "",
            "decision": "reject",
        },
        {
            "approver": "bob",
            "reason": "ticket OPS-2",
            "confirmation": "PURGE 1 IMAGES",
            "decision": "approve",
        },
    ],
    ids=["rejected", "wrong-confirmation"],
)
def test_refused_approval_changes_nothing(
    medusa_url: str, exports: Path, answer: dict[str, str]
) -> None:
    before = table_checksums(medusa_url, MEDUSA_TABLES)
    with answer_approval(answer) as seen, pytest.raises(ApprovalDenied) as refused:
        purge_product_media(dry_run=False)
    assert len(seen) == 1
    assert "nothing changed" in str(refused.value)
    if answer["decision"] == "approve":
        assert "PURGE 1 IMAGES" in str(refused.value)
        assert seen[0]["expected_confirmation"] in str(refused.value)
    assert table_checksums(medusa_url, MEDUSA_TABLES) == before
    assert audit_count(medusa_url) == 0


def test_approval_timeout_fails_the_run_and_changes_nothing(medusa_url: str, exports: Path) -> None:
    before = table_checksums(medusa_url, MEDUSA_TABLES)
    with watch_approvals() as seen, pytest.raises(ApprovalTimedOut) as timed_out:
        purge_product_media(dry_run=False, approval_timeout_s=2)
    assert "timed out after 2 s" in str(timed_out.value)
    assert table_checksums(medusa_url, MEDUSA_TABLES) == before

    run = read_flow_run(seen[0]["flow_run_id"])
    assert run.state is not None and run.state.is_failed(), run.state
    assert run.name and run.parameters["approval_timeout_s"] == 2


# ---------------------------------------------------------------- drift during the pause


def purge_with_a_change_during_the_pause(
    url: str, sql: str, *params: object
) -> tuple[str, dict[str, str]]:
    """A live purge whose approver first runs ``sql``: the refusal's message, and the
    tables as that change left them (the purge must leave them so)."""
    during: dict[str, str] = {}

    def change_then_approve(data: dict[str, Any]) -> dict[str, Any]:
        execute(url, sql, *params)
        during.update(table_checksums(url, MEDUSA_TABLES))
        return approve_as()(data)

    with answer_approval(change_then_approve), pytest.raises(DriftDetected) as drift:
        purge_product_media(dry_run=False)
    return str(drift.value), during


def test_image_added_during_the_pause_is_refused_as_drift(medusa_url: str, exports: Path) -> None:
    product = some_product_with_images(medusa_url)
    added = "img_01DRIFTADDEDDURINGPAUSE000"
    message, during = purge_with_a_change_during_the_pause(
        medusa_url,
        "INSERT INTO image (id, url, rank, product_id) VALUES "
        "(%s, 'http://localhost:9000/medusa-media/late.jpg', 7, %s)",
        added,
        product,
    )
    assert added in message and "1 added since the snapshot" in message
    assert table_checksums(medusa_url, MEDUSA_TABLES) == during
    assert count(medusa_url, "SELECT count(*) FROM image WHERE id = %s", added) == 1


def test_image_deleted_during_the_pause_is_refused_as_drift(medusa_url: str, exports: Path) -> None:
    victim = str(
        scalar(medusa_url, "SELECT image_id FROM product_variant_product_image ORDER BY id LIMIT 1")
    )
    message, during = purge_with_a_change_during_the_pause(
        medusa_url, "DELETE FROM image WHERE id = %s", victim
    )
    assert victim in message and "missing from the database" in message
    assert table_checksums(medusa_url, MEDUSA_TABLES) == during
    assert count(medusa_url, "SELECT count(*) FROM image") > 100


def test_image_edited_during_the_pause_is_refused_as_drift(medusa_url: str, exports: Path) -> None:
    """Same ids, one url changed: the plan hash covers every column, so the apply's
    digest moves, the thorough comparison runs and names the changed row."""
    victim = str(scalar(medusa_url, "SELECT id FROM image ORDER BY id DESC LIMIT 1"))
    message, during = purge_with_a_change_during_the_pause(
        medusa_url, "UPDATE image SET url = url || '?v=2' WHERE id = %s", victim
    )
    assert f"1 changed since the snapshot ({victim})" in message
    assert table_checksums(medusa_url, MEDUSA_TABLES) == during
    assert audit_count(medusa_url) == 0


def test_apply_without_a_verify_compares_the_file_and_a_wrong_file_hash_is_refused(
    medusa_url: str, exports: Path
) -> None:
    """The apply's two proofs: handed a verify's file hash that the file no longer has,
    it refuses before deleting anything; handed nothing, it compares the file with the
    live rows under its lock, and the audit row says which proof it used."""
    from safeops.core.errors import SnapshotInvalid
    from safeops.core.models import Approval
    from tasks.common.snapshots import now_utc
    from tasks.media.purge import apply_media_purge, plan_media_purge
    from tasks.media.snapshot import take_media_snapshot
    from tasks.media.verify import verify_media_snapshot

    approval = Approval(approver="alice", reason="test", via="saved-plan")
    uri = take_media_snapshot.fn("medusa", str(exports)).uri
    report = verify_media_snapshot.fn("medusa", uri)
    plan = plan_media_purge.fn("medusa")
    assert report.ok and report.plan_hash == plan.plan_hash and len(report.file_sha256) == 64
    before = table_checksums(medusa_url, MEDUSA_TABLES)

    with pytest.raises(SnapshotInvalid, match="changed since it was verified"):
        apply_media_purge.fn(
            "medusa",
            uri,
            plan.plan_hash,
            approval,
            now_utc(),
            verified_sha256="0" * 64,
            verified_plan_hash=report.plan_hash,
        )
    assert table_checksums(medusa_url, MEDUSA_TABLES) == before and audit_count(medusa_url) == 0

    applied = apply_media_purge.fn("medusa", uri, plan.plan_hash, approval, now_utc())
    assert applied["images"] == plan.counts["images"] > 100
    assert media_counts(medusa_url) == dict.fromkeys(MEDIA_COUNT_SQL, 0)
    counts = scalar(medusa_url, "SELECT counts FROM safeops.safeops_audit")
    assert isinstance(counts, dict) and counts["proof"] == "file compared with the live rows"


def test_an_image_no_snapshot_can_hold_is_never_deleted(medusa_url: str, exports: Path) -> None:
    """Without Medusa's foreign key an image can outlive its product. The snapshot holds
    products' documents, so it cannot hold that image; the purge must not delete it
    (it would be gone for good), so the apply refuses."""
    execute(medusa_url, "ALTER TABLE image DROP CONSTRAINT image_product_id_foreign")
    execute(
        medusa_url,
        "INSERT INTO image (id, url, rank, product_id) VALUES "
        "('img_01ORPHANWITHOUTPRODUCT0000', "
        "'http://localhost:9000/medusa-media/orphan.jpg', 0, 'prod_gone')",
    )
    before = table_checksums(medusa_url, MEDUSA_TABLES)

    with answer_approval(approve_as()), pytest.raises(DriftDetected) as refused:
        purge_product_media(dry_run=False)
    assert "images: " in str(refused.value) and "does not hold" in str(refused.value)
    assert table_checksums(medusa_url, MEDUSA_TABLES) == before
    assert audit_count(medusa_url) == 0

    # The same refusal when the apply compares the file itself (no verify to lean on).
    from safeops.core.models import Approval
    from tasks.common.snapshots import now_utc
    from tasks.media.purge import apply_media_purge, plan_media_purge
    from tasks.media.snapshot import take_media_snapshot

    uri = take_media_snapshot.fn("medusa", str(exports)).uri
    with pytest.raises(DriftDetected, match="does not hold"):
        apply_media_purge.fn(
            "medusa",
            uri,
            plan_media_purge.fn("medusa").plan_hash,
            Approval(approver="alice", reason="t", via="saved-plan"),
            now_utc(),
        )
    assert table_checksums(medusa_url, MEDUSA_TABLES) == before


# ---------------------------------------------------------------- fault in the middle


def test_fault_mid_apply_leaves_nothing_half_done_and_a_rerun_succeeds(
    medusa_url: str, exports: Path
) -> None:
    execute(
        medusa_url,
        """
        CREATE FUNCTION safeops_test_fault() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'injected fault: thumbnail update refused'; END $$;
        CREATE TRIGGER safeops_test_fault BEFORE UPDATE OF thumbnail ON product
            FOR EACH ROW EXECUTE FUNCTION safeops_test_fault();""",
    )
    before = table_checksums(medusa_url, MEDUSA_TABLES)

    with answer_approval(approve_as()) as seen:
        state = purge_product_media(dry_run=False, return_state=True)
    assert len(seen) == 1  # it got as far as the apply
    assert state.is_failed()
    assert "injected fault" in str(state.message) + repr(state.result(raise_on_failure=False))
    # The images were deleted before the thumbnail update failed: all of it rolled back.
    assert table_checksums(medusa_url, MEDUSA_TABLES) == before
    assert audit_count(medusa_url) == 0

    execute(medusa_url, "DROP TRIGGER safeops_test_fault ON product")
    result = purge_live()
    assert result.applied["images"] > 100
    assert media_counts(medusa_url) == dict.fromkeys(MEDIA_COUNT_SQL, 0)


# ---------------------------------------------------------------- re-runs


def test_purge_twice_then_restore_twice(medusa_url: str, exports: Path) -> None:
    unstamped_before = table_checksums(medusa_url, MEDUSA_TABLES, STAMPS)
    first = purge_live()
    purged = table_checksums(medusa_url, MEDUSA_TABLES)
    assert first.snapshot_uri

    with answer_approval(approve_as()) as seen:
        again = purge_product_media(dry_run=False)
    assert seen == []  # no approval pause for an empty plan
    assert again.message.startswith("Nothing to purge") and again.applied == {}
    assert table_checksums(medusa_url, MEDUSA_TABLES) == purged

    restored = restore_live(first.snapshot_uri)
    assert restored.applied["images"] == first.applied["images"]
    after = table_checksums(medusa_url, MEDUSA_TABLES)
    # All seven tables as they were, but for the timestamp the thumbnail updates move.
    assert table_checksums(medusa_url, MEDUSA_TABLES, STAMPS) == unstamped_before

    with answer_approval(approve_as()) as seen:
        twice = restore_product_media(first.snapshot_uri, dry_run=False)
    assert seen == []
    assert twice.message.startswith("Nothing to restore") and twice.applied == {}
    assert twice.plan.counts["images_already_present"] == first.applied["images"]
    assert table_checksums(medusa_url, MEDUSA_TABLES) == after


# ---------------------------------------------------------------- restore rules


def test_restore_keeps_newer_thumbnails_and_skips_deleted_products(
    medusa_url: str, exports: Path
) -> None:
    thumbs_before = product_thumbnails(medusa_url)
    kept, gone = sorted(thumbs_before)[:2]
    gone_images = count(medusa_url, "SELECT count(*) FROM image WHERE product_id = %s", gone)
    total_images = count(medusa_url, "SELECT count(*) FROM image")
    assert gone_images > 0
    result = purge_live()
    assert result.snapshot_uri

    new_url = "http://localhost:9000/medusa-media/new-key-scheme/kept.webp"
    execute(medusa_url, "UPDATE product SET thumbnail = %s WHERE id = %s", new_url, kept)
    execute(medusa_url, "DELETE FROM product WHERE id = %s", gone)

    restored = restore_live(result.snapshot_uri)
    counts = restored.plan.counts
    assert counts["images_product_gone"] == gone_images
    assert counts["product_thumbnails_kept"] == 1
    assert counts["thumbnails_owner_gone"] >= 1
    assert restored.applied["images"] == total_images - gone_images
    assert count(medusa_url, "SELECT count(*) FROM image") == total_images - gone_images
    assert count(medusa_url, "SELECT count(*) FROM image WHERE product_id = %s", gone) == 0

    thumbs_after = product_thumbnails(medusa_url)
    assert thumbs_after[kept] == new_url  # never clobbered
    expected = {k: v for k, v in thumbs_before.items() if k not in (kept, gone)}
    assert {k: v for k, v in thumbs_after.items() if k != kept} == expected


# ---------------------------------------------------------------- artifacts


def test_artifacts_show_real_counts_approver_and_plan_hash(medusa_url: str, exports: Path) -> None:
    real = media_counts(medusa_url)
    with answer_approval(approve_as("carol", "ticket OPS-77")) as seen:
        result = purge_product_media(dry_run=False)
    artifacts = {a.key: a for a in read_artifacts([seen[0]["flow_run_id"]]) if a.key}

    rows = json.loads(artifacts["media-purge-counts"].data)
    table = {row["what"]: row for row in rows}
    assert {k: v["planned"] for k, v in table.items()} == real
    for name in ("images", "variant_links", "product_thumbnails", "variant_thumbnails"):
        assert table[name]["applied"] == real[name], name
    assert real["images"] > 100 and real["variant_thumbnails"] > 0

    summary = artifacts["media-purge-summary"].data
    assert "carol" in summary and "ticket OPS-77" in summary
    assert result.plan.plan_hash in summary
    assert result.snapshot_uri and Path(result.snapshot_uri).name in str(
        artifacts["media-purge-snapshot"].data
    )


# ---------------------------------------------------------------- secrets


PASSWORD = "S3cr3t-pw-XYZ"
AWS_SECRET = "AwsSecretMarker-9f3Kq"


@pytest.fixture()
def password_url(medusa_url: str, pg_admin: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """MEDUSA_DATABASE_URL with a password, for a role that may work on the test database.

    The server trusts loopback, so any password logs in; what matters is that the
    URL carries one. The role is not a superuser and is left in place (other test
    runs on the same server may be using it)."""
    if pg_admin != LOCAL:
        pytest.skip("needs the machine's PostgreSQL on 127.0.0.1:5432")
    execute(
        pg_admin,
        f"""DO $$ BEGIN
        CREATE ROLE safeops_pw_test WITH LOGIN PASSWORD '{PASSWORD}';
        EXCEPTION WHEN duplicate_object THEN NULL; END $$""",
    )
    database = medusa_url.rsplit("/", 1)[1].split("?")[0]
    execute(
        medusa_url,
        f'GRANT CREATE ON DATABASE "{database}" TO safeops_pw_test; '
        "GRANT ALL ON ALL TABLES IN SCHEMA public TO safeops_pw_test",
    )
    url = f"postgresql://safeops_pw_test:{PASSWORD}@127.0.0.1:5432/{database}"
    monkeypatch.setenv("MEDUSA_DATABASE_URL", url)
    return url


def test_no_secret_in_parameters_logs_artifacts_snapshots_or_audit(
    password_url: str, s3_bucket: str, s3_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    loggers = [logging.getLogger(n) for n in ("prefect.flow_runs", "prefect.task_runs")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.INFO)  # ship the info logs to the API so there is something to read
    try:
        with answer_approval(approve_as()) as seen:
            purged = purge_product_media(dry_run=False)
            assert purged.snapshot_uri
            restored = restore_product_media(purged.snapshot_uri, dry_run=False)
        APILogHandler().flush()
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
    assert restored.applied["images"] == purged.applied["images"] > 0
    run_ids = [s["flow_run_id"] for s in seen]
    assert len(run_ids) == 2

    texts: dict[str, str] = {}
    with get_client(sync_client=True) as client:
        for run_id in run_ids:
            texts[f"parameters {run_id}"] = json.dumps(client.read_flow_run(run_id).parameters)
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=run_ids)))
    texts["logs"] = "\n".join(log.message for log in logs)
    texts["artifacts"] = "\n".join(a.model_dump_json() for a in read_artifacts(run_ids))
    s3 = boto3.client("s3", endpoint_url=s3_server)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert len(keys) >= 2
    for key in keys:
        texts[f"s3://{s3_bucket}/{key}"] = (
            s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read().decode()
        )
    with psycopg.connect(password_url) as conn:
        texts["audit"] = json.dumps(
            conn.execute("SELECT to_jsonb(a) FROM safeops.safeops_audit a").fetchall(), default=str
        )

    # The checks are not vacuous: the runs logged, and the role from the URL did the work.
    assert "purge committed" in texts["logs"] and "restore committed" in texts["logs"]
    assert "safeops_pw_test" in texts["audit"] and "media-purge-counts" in texts["artifacts"]
    for where, text in texts.items():
        assert PASSWORD not in text, where
        assert AWS_SECRET not in text, where


# ---------------------------------------------------------------- socket URL


def test_socket_url_form_gives_the_same_plan_as_tcp(
    medusa_url: str, pg_admin: str, exports: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    socket_dir = Path("/var/run/postgresql")
    if not (socket_dir / ".s.PGSQL.5432").exists() or pg_admin != LOCAL:
        pytest.skip("no local PostgreSQL socket in /var/run/postgresql")
    tcp = purge_product_media()
    database = medusa_url.rsplit("/", 1)[1].split("?")[0]
    monkeypatch.setenv(
        "MEDUSA_DATABASE_URL", f"postgresql://postgres@/{database}?host={socket_dir}"
    )
    via_socket = purge_product_media()
    assert via_socket.plan.plan_hash == tcp.plan.plan_hash
    assert via_socket.plan.counts["images"] > 100
    assert str(socket_dir) in via_socket.target and database in via_socket.target
