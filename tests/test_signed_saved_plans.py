"""Issue 12: a saved plan needs a signature on every destructive flow, not only purge and reset.

With SAFEOPS_ALLOWED_SIGNERS set, ``--plan HASH`` alone is refused (exit 4, nothing
changed) by `safeops media restore`, `safeops site restore` and `safeops media
migrate-refs`; the same plan with the file `safeops sign-plan` wrote is applied, and the
audit row names the signer. Real parts: ssh-keygen keys, PostgreSQL, moto's S3 server,
Prefect's harness, the CLI through Typer's runner.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from flows.media_purge import purge_product_media
from flows.media_refs import migrate_product_media_refs
from flows.media_restore import restore_product_media
from flows.site_reset import reset_site_structure
from flows.site_restore import restore_site_structure
from safeops.seeds.medusa import FILE_URL
from tasks.media.objects import key_for_url
from tests.cli import cli
from tests.conftest import CMS_TABLES, MEDUSA_TABLES, answer_approval
from tests.pg import audit_records, execute, scalar, table_checksums
from tests.signing import Key, no_key_material, sign_as

pytestmark = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs OpenSSH")


def sign_plan(plan_hash: str, flow: str, target: str, key: Key, out: Path) -> Path:
    run = cli(
        "sign-plan",
        plan_hash,
        "--flow",
        flow,
        "--target",
        target,
        "--reason",
        "OPS-12 reviewed saved plan",
        "--key",
        str(key.path),
        "--out",
        str(out),
    )
    assert run.code == 0, run
    return out


def refused_then_applied(
    url: str,
    tables: list[str],
    command: list[str],
    plan_hash: str,
    flow: str,
    target: str,
    signer: Key,
    tmp_path: Path,
    elsewhere: Callable[[], object] = lambda: None,
) -> dict[str, object]:
    """``command --live --plan HASH`` is refused without a signature (exit 4, no row
    changed, no audit row added, nothing ``elsewhere``), then applied with the signed
    plan; returns the new audit row."""
    before, rows_before, outside = (
        table_checksums(url, tables),
        len(audit_records(url)),
        elsewhere(),
    )
    unsigned = cli(*command, "--live", "--plan", plan_hash)
    assert unsigned.code == 4, unsigned
    assert f"saved plan {plan_hash} carries no signature" in unsigned.error_line
    assert "safeops sign-plan" in unsigned.error_line
    assert table_checksums(url, tables) == before
    assert len(audit_records(url)) == rows_before
    assert elsewhere() == outside

    signature = sign_plan(plan_hash, flow, target, signer, tmp_path / f"{flow}.plan.sig")
    applied = cli(*command, "--live", "--plan", plan_hash, "--plan-signature", str(signature))
    assert applied.code == 0, applied
    assert f"Approved by {signer.principal} (saved-plan)." in applied.stdout
    rows = audit_records(url)[rows_before:]
    assert rows
    for row in rows:  # the refs migration writes one per batch
        assert row["identity"] == "verified" and row["approver"] == signer.principal
        [vote] = row["signatures"]
        assert vote["fingerprint"] == signer.fingerprint
        assert vote["statement"].split("\n")[1:3] == [
            "flow_run_id: saved-plan",
            f"flow: {flow}",
        ]
    return rows[-1]


def test_media_restore_needs_a_signed_saved_plan(
    medusa_url: str, exports: Path, signed: dict[str, Key], tmp_path: Path
) -> None:
    images = scalar(medusa_url, "SELECT count(*) FROM image")
    with answer_approval(sign_as(signed["alice"])):
        purged = purge_product_media(dry_run=False)
    assert purged.snapshot_uri and scalar(medusa_url, "SELECT count(*) FROM image") == 0
    plan = restore_product_media(purged.snapshot_uri, dry_run=True).plan.plan_hash

    row = refused_then_applied(
        medusa_url,
        MEDUSA_TABLES,
        ["media", "restore", purged.snapshot_uri],
        plan,
        "restore-product-media",
        "medusa",
        signed["bob"],
        tmp_path,
    )
    assert row["plan_hash"] == plan
    assert scalar(medusa_url, "SELECT count(*) FROM image") == images


def test_site_restore_needs_a_signed_saved_plan(
    cms: tuple[str, dict[str, str]], exports: Path, signed: dict[str, Key], tmp_path: Path
) -> None:
    url, sites = cms
    site = sites["atelier"]
    count = "SELECT count(*) FROM terms WHERE site_id = %s AND type = 'category'"
    categories = scalar(url, count, site)
    assert categories
    with answer_approval(sign_as(signed["alice"])):
        reset = reset_site_structure(site_id=site, dry_run=False)
    assert reset.snapshot_uri and scalar(url, count, site) == 0
    plan = restore_site_structure(reset.snapshot_uri, dry_run=True).plan.plan_hash

    refused_then_applied(
        url,
        CMS_TABLES,
        ["site", "restore", reset.snapshot_uri],
        plan,
        "restore-site-structure",
        "cms",
        signed["carol"],
        tmp_path,
    )
    assert scalar(url, count, site) == categories


def test_refs_migration_needs_a_signed_saved_plan(
    medusa_url: str,
    s3_bucket: str,
    s3_server: str,
    signed: dict[str, Key],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import boto3

    # Five products and their objects in a media bucket: enough to copy, quick to run.
    execute(
        medusa_url,
        "DELETE FROM product WHERE id NOT IN (SELECT product_id FROM image "
        "WHERE deleted_at IS NULL ORDER BY product_id LIMIT 5)",
    )
    bucket = f"media-{uuid.uuid4().hex[:10]}"
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket=bucket)
    monkeypatch.setenv("SAFEOPS_MEDIA_BUCKET", bucket)
    monkeypatch.setenv("SAFEOPS_MEDIA_FILE_URL", FILE_URL)
    with psycopg.connect(medusa_url) as conn:
        urls = {u for (u,) in conn.execute("SELECT url FROM image").fetchall()}
    for key in {key_for_url(u, FILE_URL) for u in urls} - {None}:
        s3.put_object(Bucket=bucket, Key=str(key), Body=b"jpeg", ContentType="image/jpeg")
    plan = migrate_product_media_refs(dry_run=True).plan
    assert plan.counts["to_copy"] > 0
    refs = "SELECT count(*) FROM product WHERE metadata ? 'media'"
    assert scalar(medusa_url, refs) == 0

    def copies() -> int:
        return int(s3.list_objects_v2(Bucket=bucket, Prefix="products/")["KeyCount"])

    row = refused_then_applied(
        medusa_url,
        MEDUSA_TABLES,
        ["media", "migrate-refs"],
        plan.plan_hash,
        "migrate-product-media-refs",
        "medusa",
        signed["bob"],
        tmp_path,
        elsewhere=copies,
    )
    assert row["plan_hash"] == plan.plan_hash
    assert copies() == plan.counts["to_copy"]
    assert scalar(medusa_url, refs) == plan.counts["products"]
    no_key_material(str(row), signed)
