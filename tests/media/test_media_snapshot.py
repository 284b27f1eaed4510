"""Media snapshots: the S3 store end to end, integrity checks (tampering and
truncation), snapshots from another database, and object checks in the bucket."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import psycopg
import pytest
from sqlalchemy import create_engine

from flows.media_purge import purge_product_media
from flows.media_restore import restore_product_media
from flows.media_snapshot import snapshot_product_media
from flows.media_verify import verify_product_media_snapshot
from safeops.core.errors import ForeignSnapshot, SnapshotInvalid
from safeops.core.settings import sqlalchemy_url
from safeops.seeds.medusa import FILE_URL, load_schema, seed_medusa
from tasks.media.objects import key_for_url
from tests.conftest import MEDUSA_TABLES, answer_approval, approve_as
from tests.pg import STAMPS, execute, fresh_database, scalar, table_checksums

REMOVE_MEDIA = (
    "DELETE FROM image; UPDATE product SET thumbnail = NULL; "
    "UPDATE product_variant SET thumbnail = NULL"
)


def count(url: str, sql: str) -> int:
    return int(scalar(url, sql))  # type: ignore[call-overload]


def thumbnails(url: str) -> list[tuple[str, str | None]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT id, thumbnail FROM product UNION ALL "
            "SELECT id, thumbnail FROM product_variant ORDER BY 1"
        ).fetchall()


def body_start(lines: list[bytes]) -> int:
    """Index of the first body document line (after the `"products": [` line)."""
    return next(i for i, line in enumerate(lines) if line.rstrip().endswith(b": [")) + 1


def write_variant(original: Path, name: str, data: bytes) -> str:
    path = original.parent / f"medusa-media-snapshot-{name}.json"
    path.write_bytes(data)
    return str(path)


# ---------------------------------------------------------------- S3 store, end to end


def test_full_chain_on_s3_store(medusa_url: str, s3_bucket: str, s3_server: str) -> None:
    before = table_checksums(medusa_url, MEDUSA_TABLES, STAMPS)
    thumbs_before = thumbnails(medusa_url)
    images = count(medusa_url, "SELECT count(*) FROM image")
    products = count(
        medusa_url,
        "SELECT count(*) FROM product p WHERE p.thumbnail IS NOT NULL "
        "OR EXISTS (SELECT 1 FROM image i WHERE i.product_id = p.id) "
        "OR EXISTS (SELECT 1 FROM product_variant v "
        "WHERE v.product_id = p.id AND v.thumbnail IS NOT NULL)",
    )

    with answer_approval(approve_as()) as seen:
        purged = purge_product_media(dry_run=False)
    assert len(seen) == 1 and purged.applied["images"] == images
    assert count(medusa_url, "SELECT count(*) FROM image") == 0
    uri = purged.snapshot_uri
    assert uri and uri.startswith(f"s3://{s3_bucket}/snapshots/medusa-media-snapshot-")

    s3 = boto3.client("s3", endpoint_url=s3_server)
    key = uri.removeprefix(f"s3://{s3_bucket}/")
    stored = s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
    head = stored.decode().splitlines()[:20]
    # The apply leaned on the verify: the very bytes it read (hashed again over S3) and
    # the row digest, without re-reading the body into the database.
    proof = scalar(
        medusa_url,
        "SELECT counts FROM safeops.safeops_audit WHERE flow_name = 'purge-product-media'",
    )
    assert isinstance(proof, dict) and proof["proof"] == "verified file + row digest"
    assert (
        proof["snapshotSha256"]
        == hashlib.sha256(
            stored.split(b"[\n", 1)[1].rsplit(b"\n]", 1)[0].replace(b",\n", b"\n") + b"\n"
        ).hexdigest()
    )
    assert f'"totalProducts": {products},' in head
    assert f'"totalImages": {images},' in head
    after_key = (purged.after_snapshot_uri or "").removeprefix(f"s3://{s3_bucket}/")
    after_head = s3.get_object(Bucket=s3_bucket, Key=after_key)["Body"].read().decode()
    assert '"totalImages": 0,' in after_head.splitlines()[:20]

    with answer_approval(approve_as()):
        restored = restore_product_media(uri, dry_run=False)
    assert restored.applied["images"] == images
    # All seven tables as they were, but for the timestamp the thumbnail updates move.
    assert table_checksums(medusa_url, MEDUSA_TABLES, STAMPS) == before
    # Every thumbnail is back (updated_at moves, the URL does not).
    assert thumbnails(medusa_url) == thumbs_before
    # The undo point describes the restored catalog again, live ids included.
    report = verify_product_media_snapshot(uri)
    assert report.ok and "live-match" in [c.name for c in report.checks]


# ---------------------------------------------------------------- integrity


def test_tampered_or_truncated_snapshot_is_refused(medusa_url: str, exports: Path) -> None:
    snap = snapshot_product_media()
    assert verify_product_media_snapshot(snap.uri).ok  # the untouched file passes
    original = Path(snap.uri)
    data = original.read_bytes()
    lines = data.splitlines(keepends=True)
    start = body_start(lines)

    def change_one_byte(needle: bytes, replacement: bytes) -> bytes:
        i = next(n for n in range(start, len(lines)) if needle in lines[n])
        changed = list(lines)
        changed[i] = lines[i].replace(needle, replacement, 1)
        assert len(changed[i]) == len(lines[i]) and changed[i] != lines[i]
        return b"".join(changed)

    tampered = {
        "rank": change_one_byte(b'"rank":1', b'"rank":2'),
        "url": change_one_byte(b"/medusa-media/", b"/medusa-medib/"),
    }
    for name, body in tampered.items():
        uri = write_variant(original, f"tampered-{name}", body)
        with pytest.raises(SnapshotInvalid) as invalid:
            verify_product_media_snapshot(uri)
        assert "checksum check" in str(invalid.value), name

    cut_mid_document = data[: len(b"".join(lines[:start])) + len(lines[start]) // 2]
    cut_between_documents = b"".join(lines[: start + 3])
    truncated = [
        write_variant(original, "cut-mid", cut_mid_document),
        write_variant(original, "cut-between", cut_between_documents),
    ]
    for uri in truncated:
        with pytest.raises(SnapshotInvalid) as invalid:
            verify_product_media_snapshot(uri)
        assert "truncation check" in str(invalid.value), uri

    # Restore refuses them too, before any approval, with the catalog left as it is.
    images = count(medusa_url, "SELECT count(*) FROM image")
    execute(medusa_url, REMOVE_MEDIA)
    emptied = table_checksums(medusa_url, MEDUSA_TABLES)
    with pytest.raises(SnapshotInvalid) as invalid:  # intact, but no longer the live state
        verify_product_media_snapshot(snap.uri)
    assert "live-match check" in str(invalid.value)
    assert f"image: {images} missing from the database" in str(invalid.value)
    for uri, check in (
        (write_variant(original, "tampered-rank-2", tampered["rank"]), "checksum"),
        (truncated[0], "truncation"),
    ):
        with pytest.raises(SnapshotInvalid) as invalid:
            restore_product_media(uri, dry_run=False, approval_timeout_s=5)
        assert f"{check} check" in str(invalid.value)
    assert table_checksums(medusa_url, MEDUSA_TABLES) == emptied
    assert count(medusa_url, "SELECT count(*) FROM image") == 0


# ---------------------------------------------------------------- another database


def test_snapshot_from_another_database_is_refused_unless_forced(
    medusa_url: str, pg_admin: str, exports: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with fresh_database(pg_admin, prefix="safeops_other") as other:
        engine = create_engine(sqlalchemy_url(other))
        with engine.begin() as conn:
            load_schema(conn, "medusa.sql")
            seed_medusa(conn)
        engine.dispose()
        monkeypatch.setenv("MEDUSA_DATABASE_URL", other)
        foreign = snapshot_product_media()
        monkeypatch.setenv("MEDUSA_DATABASE_URL", medusa_url)

        with pytest.raises(ForeignSnapshot) as refused:
            verify_product_media_snapshot(foreign.uri)
        assert "source check" in str(refused.value)
        assert other.rsplit("/", 1)[1].split("?")[0] in str(refused.value)

        images = count(medusa_url, "SELECT count(*) FROM image")
        execute(medusa_url, REMOVE_MEDIA)
        emptied = table_checksums(medusa_url, MEDUSA_TABLES)
        with pytest.raises(ForeignSnapshot) as refused:
            restore_product_media(foreign.uri, dry_run=False, approval_timeout_s=5)
        assert "force" in str(refused.value)
        assert table_checksums(medusa_url, MEDUSA_TABLES) == emptied

        forced = restore_product_media(foreign.uri, force=True)  # dry run
        assert forced.dry_run and forced.plan.counts["images"] == images > 0
        assert table_checksums(medusa_url, MEDUSA_TABLES) == emptied


# ---------------------------------------------------------------- objects in the bucket


def test_verify_reports_missing_objects(
    medusa_url: str, s3_bucket: str, s3_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SAFEOPS_MEDIA_BUCKET", s3_bucket)
    monkeypatch.setenv("SAFEOPS_MEDIA_FILE_URL", FILE_URL)
    with psycopg.connect(medusa_url) as conn:
        rows = conn.execute("SELECT id, url FROM image ORDER BY id").fetchall()
    keys = {image_id: key_for_url(url, FILE_URL) for image_id, url in rows}
    assert all(keys.values()) and len(set(keys.values())) == len(keys)
    absent = sorted(keys)[:2]
    s3 = boto3.client("s3", endpoint_url=s3_server)
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda key: s3.put_object(Bucket=s3_bucket, Key=key, Body=b"jpeg"),
                [str(key) for image_id, key in keys.items() if image_id not in absent],
            )
        )

    snap = snapshot_product_media()
    with pytest.raises(SnapshotInvalid) as invalid:
        verify_product_media_snapshot(snap.uri, check_objects=True)
    message = str(invalid.value)
    assert "objects" in message and "2 object(s) missing" in message
    assert all(image_id in message for image_id in absent)
    # Exactly the two: the other objects, spaces and percent-encoding included, were found.
    assert len(keys) > 100 and any(" " in key for key in keys.values() if key)


# ---------------------------------------------------------------- retention


def test_retention_keeps_the_newest_and_every_audited_snapshot(
    medusa_url: str, exports: Path
) -> None:
    """Retention deletes snapshot files: only the oldest beyond `keep`, never one a recent
    audit row names, never anything but our own names; work files of a run that died a
    day ago go, a fresh one stays."""
    import os
    import time

    from safeops.core.errors import BadInput
    from tasks.common.retention import prune_snapshots

    names = [f"medusa-media-snapshot-2026010{d}T000000Z.json" for d in range(1, 6)]
    exports.mkdir(parents=True, exist_ok=True)
    for name in names:
        (exports / name).write_text("{}\n")
    foreign = exports / "medusa-media-snapshot-notes.txt"
    foreign.write_text("mine\n")
    old_part = exports / ".safeops-dead1234.body.part"
    fresh_part = exports / f".{names[0]}.0123456789ab.part"
    for part in (old_part, fresh_part):
        part.write_text("partial")
    day_and_a_bit = time.time() - 90000
    os.utime(old_part, (day_and_a_bit, day_and_a_bit))
    execute(medusa_url, Path("safeops/schemas/audit.sql").read_text())
    execute(
        medusa_url,
        "INSERT INTO safeops.safeops_audit (flow_name, target, plan_hash, "
        "approver, reason, approved_via, counts, snapshot_uri) VALUES "
        "('purge-product-media', 'medusa', 'h', 'alice', 'r', 'form', '{}', %s)",
        str(exports / names[1]),
    )

    with pytest.raises(BadInput):
        prune_snapshots.fn("medusa", str(exports), "medusa-media-snapshot", 0)
    assert len(list(exports.iterdir())) == 8  # the refusal deleted nothing

    outcome = prune_snapshots.fn("medusa", str(exports), "medusa-media-snapshot", 2)
    assert outcome["pruned"] == [str(exports / n) for n in (names[0], names[2])]
    assert outcome["kept_for_audit"] == [str(exports / names[1])]
    assert outcome["kept"] == [str(exports / n) for n in names[3:]]
    assert outcome["leftover_parts_removed"] == [str(old_part)]
    assert sorted(p.name for p in exports.iterdir()) == sorted(
        [names[1], *names[3:], foreign.name, fresh_part.name]
    )
