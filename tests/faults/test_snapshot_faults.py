"""Faults 3 and 4: the snapshot store is down, or the snapshot in it is not what was
written (truncated, one byte changed, summary edited to match, another database's).

Already covered elsewhere (not repeated here): media verify of a one-byte change and
of truncation, media restore of both, media verify/restore of another database's
snapshot (tests/test_media_snapshot.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cli import cli
from tests.conftest import CMS_TABLES, MEDUSA_TABLES, answer_approval, approve_as
from tests.faults.conftest import (
    change_one_byte,
    checksums,
    on_event,
    read_snapshot_file,
    runs_of,
    task_runs,
    truncate_mid_body,
    write_snapshot_file,
)
from tests.pg import audit_rows, fresh_database

Cms = tuple[str, dict[str, str]]

# ---------------------------------------------------------------- 3. S3 endpoint down


@pytest.fixture()
def s3_down(monkeypatch: pytest.MonkeyPatch) -> str:
    """A bucket on a moto server of its own, which is then stopped: the endpoint refuses
    connections. Task retries keep their count (3) but wait 0.1 s instead of 1/3/9 s."""
    import boto3
    from moto.server import ThreadedMotoServer

    from tasks.common.retry import TRANSIENT_RETRIES
    from tasks.media.snapshot import take_media_snapshot
    from tasks.site.snapshot import snapshot_site
    from tests.conftest import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="snapshots-down")
    server.stop()
    monkeypatch.setenv("SAFEOPS_S3_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("SAFEOPS_SNAPSHOT_URI", "s3://snapshots-down/safeops")
    assert TRANSIENT_RETRIES["retries"] == 3
    for task in (take_media_snapshot, snapshot_site):
        monkeypatch.setattr(task, "retry_delay_seconds", [0.1, 0.1, 0.1])
    return endpoint


def assert_failed_after_retries(flow_name: str, task_name: str, since: object) -> None:
    (run,) = runs_of(flow_name, since)
    assert run.state.is_failed()
    (snapshot_run,) = task_runs(run.id, task_name)
    assert snapshot_run.run_count == 4 and snapshot_run.state.is_failed()  # 1 + 3 retries


def test_s3_down_while_the_purge_snapshot_is_written(medusa_url: str, s3_down: str) -> None:
    from prefect.types._datetime import now

    before = checksums(medusa_url, MEDUSA_TABLES)
    since = now("UTC")
    run = cli("media", "purge", "--live", "--yes")
    assert run.code == 1, run
    assert s3_down in run.error_line and "unreachable while writing" in run.error_line
    assert "Approved" not in run.stdout  # it never got as far as the approval
    assert_failed_after_retries("purge-product-media", "snapshot-media", since)
    assert checksums(medusa_url, MEDUSA_TABLES) == before
    assert audit_rows(medusa_url) == []


def test_s3_down_while_the_site_snapshot_is_written(cms: Cms, s3_down: str) -> None:
    from prefect.types._datetime import now

    url, sites = cms
    before = checksums(url, CMS_TABLES)
    since = now("UTC")
    run = cli("site", "reset", sites["atelier"], "--live", "--yes")
    assert run.code == 1, run
    assert s3_down in run.error_line and "unreachable while writing" in run.error_line
    assert_failed_after_retries("reset-site-structure", "snapshot-site-structure", since)
    assert checksums(url, CMS_TABLES) == before
    assert audit_rows(url) == []


# ---------------------------------------------------------------- 4. media: verify


def test_media_snapshot_with_its_summary_edited_to_match_fails_the_live_match(
    medusa_url: str, exports: Path
) -> None:
    """A body edited and its checksum recomputed passes format, checksum and totals; the
    live comparison still refuses it, naming the changed row."""
    from flows.media_snapshot import snapshot_product_media

    uri = snapshot_product_media().uri
    summary, key, docs = read_snapshot_file(uri)
    product = json.loads(docs[0])
    image_id = product["images"][0]["id"]
    product["images"][0]["url"] = "http://attacker.test/x.jpg"
    docs[0] = json.dumps(product, separators=(",", ":")).encode()
    write_snapshot_file(uri, summary, key, docs)

    run = cli("media", "verify", uri)
    assert run.code == 3, run
    assert (
        "live-match" in run.error_line
        and f"1 changed since the snapshot ({image_id})" in run.error_line
    )


NOT_JSON = {  # same length, so a stale checksum stays the only other damage
    "not-json": (b'"rank":', b'"rank"='),
    "not-utf8": (b"/medusa-media/", b"/medusa-medi\xff/"),
}


@pytest.mark.parametrize("case", sorted(NOT_JSON))
def test_media_body_that_is_not_json_fails_the_format_check_only_if_its_checksum_holds(
    medusa_url: str, exports: Path, case: str
) -> None:
    """Restore parses the documents as they are copied in, before the body's end (and so
    its checksum) is reached: a damaged body is still reported by its checksum, and only
    a body whose checksum holds by the format check. Verify reaches the same load once
    the body differs from the live catalog."""
    from flows.media_restore import restore_product_media
    from flows.media_snapshot import snapshot_product_media
    from flows.media_verify import verify_product_media_snapshot
    from safeops.core.errors import SnapshotInvalid

    needle, replacement = NOT_JSON[case]
    uri = snapshot_product_media().uri
    before = checksums(medusa_url, MEDUSA_TABLES)
    stale = Path(uri).with_name(f"stale-{case}.json")
    stale.write_bytes(Path(uri).read_bytes())
    change_one_byte(stale, needle, replacement)
    with pytest.raises(SnapshotInvalid, match="failed the checksum check"):
        restore_product_media(str(stale), dry_run=True)

    summary, key, docs = read_snapshot_file(stale)  # the same damage, checksum recomputed
    write_snapshot_file(uri, summary, key, docs)
    for run in (
        lambda: restore_product_media(uri, dry_run=True),
        lambda: verify_product_media_snapshot(uri),
    ):
        with pytest.raises(
            SnapshotInvalid,
            match="failed the format check: its documents do not fit the Medusa tables",
        ):
            run()
    assert checksums(medusa_url, MEDUSA_TABLES) == before


# ---------------------------------------------------------------- 4. purge: the undo point
# is replaced during the approval pause. The apply hashes its snapshot again and refuses.


def edit_url(uri: str) -> None:
    summary, key, docs = read_snapshot_file(uri)
    product = json.loads(docs[-1])
    product["images"][-1]["url"] = "http://attacker.test/x.jpg"
    docs[-1] = json.dumps(product, separators=(",", ":")).encode()
    write_snapshot_file(uri, summary, key, docs)


def other_source(uri: str) -> None:
    text = Path(uri).read_text()
    summary, _, _ = read_snapshot_file(uri)
    Path(uri).write_text(
        text.replace(
            f'"sourceDatabase": "{summary["sourceDatabase"]}"',
            '"sourceDatabase": "another_shop"',
            1,
        )
    )


def edit_total_images(uri: str) -> None:
    text = Path(uri).read_text()
    summary, _, _ = read_snapshot_file(uri)
    total = summary["totalImages"]
    Path(uri).write_text(
        text.replace(f'"totalImages": {total},', f'"totalImages": {total + 1},', 1)
    )


TAMPER: dict[str, tuple[Callable[[str], None], str]] = {
    "checksum": (
        lambda uri: change_one_byte(uri, b"/medusa-media/", b"/medusa-medib/"),
        "checksum check",
    ),
    "truncated": (truncate_mid_body, "changed since it was verified"),
    # The apply demands the very bytes its verify accepted: any edit after the verify,
    # even one that keeps the body checksum right, is refused before anything is compared.
    "summary edited to match": (edit_url, "changed since it was verified"),
    "summary total edited": (edit_total_images, "changed since it was verified"),
    "another database": (other_source, "another_shop"),
}


@pytest.mark.parametrize("case", list(TAMPER))
def test_purge_refuses_when_its_snapshot_is_tampered_during_the_pause(
    medusa_url: str, exports: Path, case: str
) -> None:
    tamper, named = TAMPER[case]
    before = checksums(medusa_url, MEDUSA_TABLES)
    with on_event("approval", lambda data: tamper(data["snapshot_uri"])):
        run = cli("media", "purge", "--live", "--yes")
    assert run.code == 3, run
    assert named in run.error_line, run
    assert checksums(medusa_url, MEDUSA_TABLES) == before
    assert audit_rows(medusa_url) == []


# ---------------------------------------------------------------- 4. site: reset and restore


def rehash_site(uri: str, *, recompute_plan_hash: bool) -> None:
    """Rename a category in the body and recompute the checksum (and the plan hash)."""
    summary, key, docs = read_snapshot_file(uri)
    i = next(n for n, d in enumerate(docs) if b'"kind":"categories"' in d.replace(b" ", b""))
    doc = json.loads(docs[i])
    doc["row"]["name"] = "Renamed"
    docs[i] = json.dumps(doc, separators=(",", ":")).encode()
    if recompute_plan_hash:
        summary["planHash"] = site_plan_hash_of(docs, summary)
    write_snapshot_file(uri, summary, key, docs)


def site_plan_hash_of(docs: list[bytes], summary: dict[str, object]) -> str:
    """The plan hash these rows hash to, computed the way verification does."""
    from safeops.core.db import engine_for, read_snapshot
    from tasks.site.snapshot import load_snapshot, snapshot_plan_hash

    engine = engine_for("cms")
    try:
        with read_snapshot(engine) as conn:
            load_snapshot(conn, iter(docs), "forged")
            derived, _ = snapshot_plan_hash(conn, str(summary["siteId"]))
            return derived
    finally:
        engine.dispose()


SITE_TAMPER: dict[str, tuple[Callable[[str], None], str]] = {
    "checksum": (lambda uri: change_one_byte(uri, b"Guides", b"Guidez"), "checksum check"),
    "truncated": (truncate_mid_body, "truncation check"),
    "summary edited to match": (
        lambda uri: rehash_site(uri, recompute_plan_hash=False),
        "plan-hash check",
    ),
    "summary and plan hash edited to match": (
        lambda uri: rehash_site(uri, recompute_plan_hash=True),
        "audit check",
    ),
}


def test_site_restore_refuses_a_tampered_snapshot(cms: Cms, exports: Path) -> None:
    """One reset, then each kind of damage on a copy of its snapshot (the last one on the
    file itself: the audit row names it)."""
    import shutil

    from flows.site_reset import reset_site_structure

    url, sites = cms
    with answer_approval(approve_as()):
        uri = reset_site_structure(sites["atelier"], dry_run=False).snapshot_uri
    assert uri
    after_reset = checksums(url, CMS_TABLES)
    for n, (case, (tamper, named)) in enumerate(SITE_TAMPER.items()):
        copy = (
            uri
            if case == "summary and plan hash edited to match"
            else uri.replace(".json", f"-{n}.json")
        )
        if copy != uri:
            shutil.copy(uri, copy)
        tamper(copy)
        run = cli("site", "restore", copy, "--live", "--yes")
        assert run.code == 3, (case, run)
        assert named in run.error_line, (case, run)
        assert checksums(url, CMS_TABLES) == after_reset, case
    assert [r[1] for r in audit_rows(url)] == ["reset-site-structure"]


def test_site_restore_refuses_another_databases_snapshot(
    cms: Cms,
    pg_admin: str,
    cms_template: tuple[str, dict[str, str]],
    exports: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flows.site_reset import reset_site_structure

    url, sites = cms
    with fresh_database(pg_admin, template=cms_template[0]) as other:
        monkeypatch.setenv("CMS_DATABASE_URL", other)
        uri = reset_site_structure(sites["atelier"]).snapshot_uri  # same site id, other db
        monkeypatch.setenv("CMS_DATABASE_URL", url)
        before = checksums(url, CMS_TABLES)
        assert uri
        run = cli("site", "restore", uri, "--live", "--yes")
    assert run.code == 3, run
    assert "snapshot was taken from database" in run.error_line
    assert other.rsplit("/", 1)[1] in run.error_line
    assert checksums(url, CMS_TABLES) == before


def rename_site_in_summary(uri: str) -> None:
    """Edit one summary line only: body, body checksum and plan hash all still hold."""
    data = Path(uri).read_bytes()
    start = data.index(b'"siteName": "')
    assert start < data.index(b": [\n")  # in the summary, before the body
    Path(uri).write_bytes(data.replace(b'"siteName": "', b'"siteName": "Forged ', 1))


# The apply compares the whole file with the one its verify accepted, so any edit after
# the verify refuses at the checksum check, before the first delete; an edited plan hash
# is already refused by the summary's plan-hash check.
RESET_TAMPER: dict[str, tuple[Callable[[str], None], str]] = {
    "checksum": (SITE_TAMPER["checksum"][0], "changed since it was verified"),
    "summary edited to match": (
        SITE_TAMPER["summary edited to match"][0],
        "changed since it was verified",
    ),
    "summary line changed": (rename_site_in_summary, "changed since it was verified"),
    "summary and plan hash edited to match": (
        SITE_TAMPER["summary and plan hash edited to match"][0],
        "plan-hash check",
    ),
}


@pytest.mark.parametrize("case", list(RESET_TAMPER))
def test_site_reset_refuses_when_its_snapshot_is_tampered_during_the_pause(
    cms: Cms, exports: Path, case: str
) -> None:
    """The undo point must still be intact when the deletes run."""
    url, sites = cms
    tamper, named = RESET_TAMPER[case]
    before = checksums(url, CMS_TABLES)
    with on_event("approval", lambda data: tamper(data["snapshot_uri"])):
        run = cli("site", "reset", sites["atelier"], "--live", "--yes")
    assert run.code == 3, run
    assert named in run.error_line, run
    assert "nothing changed" in run.error_line, run
    assert checksums(url, CMS_TABLES) == before
    assert audit_rows(url) == []


def test_site_reset_apply_refuses_a_file_edited_after_its_verify(cms: Cms, exports: Path) -> None:
    """The task itself, handed the verify's file hash: a summary-only edit (which neither
    the body checksum nor the plan hash can see) is refused and nothing changes."""
    from datetime import UTC, datetime

    from safeops.core.errors import SnapshotInvalid
    from safeops.core.models import Approval
    from tasks.site.reset import apply_site_reset
    from tasks.site.snapshot import snapshot_site, verify_site_snapshot

    url, sites = cms
    site = sites["atelier"]
    ref, plan = snapshot_site.fn("cms", site, None)
    verified = verify_site_snapshot.fn("cms", ref.uri, plan.plan_hash)
    rename_site_in_summary(ref.uri)
    before = checksums(url, CMS_TABLES)
    approval = Approval(approver="alice", reason="test", via="saved-plan")
    with pytest.raises(SnapshotInvalid, match="changed since it was verified"):
        apply_site_reset.fn(
            "cms", site, ref.uri, plan.plan_hash, verified.file_sha256, approval, datetime.now(UTC)
        )
    assert checksums(url, CMS_TABLES) == before
    assert audit_rows(url) == []


# ---------------------------------------------------------------- 4. media restore


def test_media_restore_refuses_a_snapshot_edited_to_match_after_the_purge(
    medusa_url: str, exports: Path
) -> None:
    """After a purge there is no live row to compare with: the purge's audit row, which
    records the snapshot's checksum, is what proves the file is the one that was taken."""
    from flows.media_purge import purge_product_media

    with answer_approval(approve_as()):
        uri = purge_product_media(dry_run=False).snapshot_uri
    assert uri
    purged = checksums(medusa_url, MEDUSA_TABLES)
    edit_url(uri)
    run = cli("media", "restore", uri, "--live", "--yes")
    assert run.code == 3, run
    assert "audit check" in run.error_line
    assert checksums(medusa_url, MEDUSA_TABLES) == purged
