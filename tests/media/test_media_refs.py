"""ImageRefs: `migrate-product-media-refs`, `safeops media migrate-refs` and `media upload`.

Real PostgreSQL (the seeded catalog), moto's S3 server over HTTP, Prefect's harness.
The seeded image URLs start with ``safeops.seeds.medusa.FILE_URL`` and name keys with
spaces and accents (``tote bag``, ``café``, ``crème``), percent-encoded.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from typer.testing import CliRunner

from flows.media_purge import purge_product_media
from flows.media_refs import migrate_product_media_refs
from safeops.core.image_ref import (
    KEY_RE,
    SCHEMA_ID,
    committed_schema_text,
    json_schema,
    schema_text,
)
from safeops.seeds.medusa import FILE_URL
from tasks.media.objects import key_for_url
from tasks.media.refs import write as refs_write
from tests.conftest import MEDUSA_TABLES, answer_approval, approve_as
from tests.pg import execute, table_checksums

FOREIGN_URL = "https://cdn.other-host.example/tote%20bag-01FOREIGN.jpg"
KEY_SCHEME = re.compile(r"^products/(?P<pid>[^/]+)/\d{8}T\d{6}Z-[0-9a-f-]{36}(\.[a-z0-9]+)?$")


@dataclass
class Media:
    """The media bucket and what the scenario did to the catalog."""

    url: str
    bucket: str
    s3: Any
    foreign_id: str  # URL on another host
    missing_id: str  # object never uploaded
    dup_ids: tuple[str, str]  # same URL, two products
    expected: int  # images a migration copies
    alts: dict[str, str | None]  # image id -> metadata.alt, as seeded


def _rows(url: str, sql: str, *params: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchall()


def _objects(media: Media, prefix: str = "") -> dict[str, tuple[str, int, Any]]:
    """key -> (etag, size, last modified): a rewritten object would show."""
    out: dict[str, tuple[str, int, Any]] = {}
    for page in media.s3.get_paginator("list_objects_v2").paginate(
        Bucket=media.bucket, Prefix=prefix
    ):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = (obj["ETag"].strip('"'), obj["Size"], obj["LastModified"])
    return out


def _media_docs(url: str) -> dict[str, dict[str, Any]]:
    return {
        pid: meta["media"]
        for pid, meta in _rows(
            url, "SELECT id, metadata FROM product WHERE metadata ? 'media' ORDER BY id"
        )
    }


@pytest.fixture()
def media(
    medusa_url: str, s3_bucket: str, s3_server: str, monkeypatch: pytest.MonkeyPatch
) -> Media:
    """A media bucket holding every seeded object, except one; one image on another
    host; two products sharing one URL."""
    import boto3

    bucket = f"media-{uuid.uuid4().hex[:10]}"
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket=bucket)
    monkeypatch.setenv("SAFEOPS_MEDIA_BUCKET", bucket)
    monkeypatch.setenv("SAFEOPS_MEDIA_FILE_URL", FILE_URL)
    monkeypatch.setenv("SAFEOPS_MEDIA_COPY_WORKERS", "8")

    # A smaller catalog keeps the file fast: 13 products, ~54 images, accents, spaces,
    # soft-deleted images; plus a deleted product that still has images.
    execute(
        medusa_url,
        "DELETE FROM product WHERE id NOT IN (SELECT id FROM product ORDER BY id LIMIT 13)",
    )
    execute(
        medusa_url,
        "UPDATE product SET deleted_at = now() WHERE id = (SELECT min(product_id) FROM image)",
    )
    live = _rows(
        medusa_url,
        "SELECT i.id, i.url, i.product_id FROM image i "
        "JOIN product p ON p.id = i.product_id "
        "WHERE i.deleted_at IS NULL AND p.deleted_at IS NULL ORDER BY i.id",
    )
    foreign, missing, first = live[0], live[1], live[2]
    other = next(r for r in live[3:] if r[2] != first[2])
    execute(medusa_url, "UPDATE image SET url = %s WHERE id = %s", FOREIGN_URL, foreign[0])
    execute(medusa_url, "UPDATE image SET url = %s WHERE id = %s", first[1], other[0])

    urls = {u for (u,) in _rows(medusa_url, "SELECT url FROM image")}
    keys = {key_for_url(u, FILE_URL) for u in urls} - {None, key_for_url(missing[1], FILE_URL)}
    assert any(" " in str(k) for k in keys) and any(not str(k).isascii() for k in keys)

    def put(key: str) -> None:
        s3.put_object(
            Bucket=bucket,
            Key=key,
            Body=f"image bytes of {key}".encode(),
            ContentType="image/jpeg",
            Metadata={"origin": "medusa"},
        )

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, sorted(str(k) for k in keys)))
    return Media(
        url=medusa_url,
        bucket=bucket,
        s3=s3,
        foreign_id=foreign[0],
        missing_id=missing[0],
        dup_ids=(first[0], other[0]),
        expected=len(live) - 2,
        alts=dict(_rows(medusa_url, "SELECT id, metadata->>'alt' FROM image")),
    )


def _validator() -> tuple[Draft202012Validator, Draft202012Validator]:
    """(one ImageRef, a whole metadata.media) validators from the committed file."""
    schema = json.loads(committed_schema_text())
    registry: Registry = Registry().with_resource(SCHEMA_ID, Resource.from_contents(schema))
    media = Draft202012Validator({"$ref": f"{SCHEMA_ID}#/$defs/MediaRefs"}, registry=registry)
    return Draft202012Validator(schema, registry=registry), media


def _check_refs(media: Media) -> dict[str, dict[str, Any]]:
    """Every written ref: valid, under its own key scheme, pointing at a checked copy."""
    one, whole = _validator()
    docs = _media_docs(media.url)
    objects = _objects(media)
    by_source: dict[str, dict[str, Any]] = {}
    for pid, doc in docs.items():
        whole.validate(doc)
        ranks = [r["rank"] for r in doc["refs"]]
        assert ranks == sorted(ranks)
        for ref in doc["refs"]:
            one.validate(ref)
            match = KEY_SCHEME.match(ref["key"])
            assert match and match["pid"] == pid and KEY_RE.match(ref["key"])
            assert ref["url"] == f"{FILE_URL}/{quote(ref['key'])}"
            assert key_for_url(ref["url"], FILE_URL) == ref["key"]
            source_key = str(key_for_url(ref["sourceUrl"], FILE_URL))
            assert ref["key"].endswith(Path(source_key).suffix.lower())
            copy, source = objects[ref["key"]], objects[source_key]
            assert copy[:2] == source[:2] == (ref["etag"], ref["size"])
            assert ref["contentType"] == "image/jpeg"  # the source object's type
            assert ref["alt"] == media.alts[ref["sourceImageId"]]
            by_source[ref["sourceImageId"]] = ref
    keys = [r["key"] for d in docs.values() for r in d["refs"]]
    assert len(keys) == len(set(keys))
    with ThreadPoolExecutor(8) as pool:  # the copies carry type and provenance
        heads = list(pool.map(lambda k: media.s3.head_object(Bucket=media.bucket, Key=k), keys))
    for key, head in zip(keys, heads, strict=True):
        ref = next(r for d in docs.values() for r in d["refs"] if r["key"] == key)
        assert head["ContentType"] == "image/jpeg"
        assert head["Metadata"]["origin"] == "medusa"  # the source's own metadata is kept
        assert head["Metadata"]["safeops-source-image-id"] == ref["sourceImageId"]
    return by_source


def test_schema_file_is_generated_from_the_model() -> None:
    Draft202012Validator.check_schema(json_schema())
    assert committed_schema_text() == schema_text(), (
        "regenerate: uv run python -m safeops.core.image_ref"
        " > safeops/schemas/image-ref.schema.json"
    )


def test_dry_run_reports_and_writes_nothing(media: Media) -> None:
    before = table_checksums(media.url, MEDUSA_TABLES)
    objects = _objects(media)

    result = migrate_product_media_refs()
    counts = result.plan.counts
    assert result.dry_run and not result.applied
    assert counts["to_copy"] == media.expected and counts["to_reuse"] == 0
    assert counts["skipped_unmapped_url"] == 1 and counts["skipped_missing_object"] == 1
    assert counts.get("already_done", 0) == 0
    assert counts["skipped_product_deleted"] == 2 and counts["skipped_soft_deleted"] >= 1
    assert counts["images"] == sum(
        v for k, v in counts.items() if k.startswith(("to_", "skipped_", "already_"))
    )
    notes = " ".join(result.plan.notes)
    assert media.foreign_id in notes and "other-host" in notes and media.missing_id in notes

    assert migrate_product_media_refs().plan.plan_hash == result.plan.plan_hash
    assert table_checksums(media.url, MEDUSA_TABLES) == before
    assert _objects(media) == objects


def test_live_migration_then_rerun_copies_nothing(media: Media) -> None:
    sources = _objects(media)
    metadata_before = dict(_rows(media.url, "SELECT id, metadata FROM product"))
    stamps_before = dict(_rows(media.url, "SELECT id, updated_at FROM product"))

    with answer_approval(approve_as()) as seen:
        result = migrate_product_media_refs(dry_run=False)
    assert seen[0]["expected_confirmation"] == f"MIGRATE {media.expected} IMAGES"
    assert result.applied["copied"] == result.applied["refs_written"] == media.expected
    assert result.applied["reused"] == 0

    refs = _check_refs(media)
    assert len(refs) == media.expected
    assert media.foreign_id not in refs and media.missing_id not in refs
    first, other = (refs[i] for i in media.dup_ids)  # one URL, two products: two copies
    assert first["sourceUrl"] == other["sourceUrl"] and first["key"] != other["key"]
    assert first["key"].split("/")[1] != other["key"].split("/")[1]
    assert any("%C3%A9" in r["sourceUrl"] or "%C3%A8" in r["sourceUrl"] for r in refs.values())
    assert any("%20" in r["sourceUrl"] for r in refs.values())

    # Sources unchanged (etag, metadata), none deleted; other metadata keys kept;
    # updated_at moves only where media was written.
    after = _objects(media)
    assert {k: after[k] for k in sources} == sources  # same etag, size, last-modified
    assert len(after) == len(sources) + media.expected
    for pid, meta, stamp in _rows(media.url, "SELECT id, metadata, updated_at FROM product"):
        rest = {k: v for k, v in (meta or {}).items() if k != "media"}
        assert rest == (metadata_before[pid] or {})
        assert (stamp > stamps_before[pid]) == ("media" in (meta or {})), pid
    assert any(meta and len(meta) > 1 for meta in _media_docs_full(media.url))

    # A re-run finds every ref (same sourceImageId and etag) and copies nothing.
    objects, tables = _objects(media), table_checksums(media.url, MEDUSA_TABLES)
    again = migrate_product_media_refs()
    assert again.plan.counts["already_done"] == media.expected
    assert again.plan.counts["to_copy"] == again.plan.counts["to_reuse"] == 0
    with answer_approval(approve_as()) as seen:
        live = migrate_product_media_refs(dry_run=False)
    assert not seen and not live.applied and "Nothing to migrate" in live.message
    assert _objects(media) == objects
    assert table_checksums(media.url, MEDUSA_TABLES) == tables


def _media_docs_full(url: str) -> list[dict[str, Any]]:
    return [m for (m,) in _rows(url, "SELECT metadata FROM product WHERE metadata ? 'media'")]


def test_killed_run_is_resumed_without_copying_twice(
    media: Media, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Copies made, then the ref writing dies part-way (a trigger stands in for the
    crash): the next run reuses the copies, writes the missing refs, copies nothing."""
    monkeypatch.setattr(refs_write, "WRITE_BATCH", 3)
    last = _rows(media.url, "SELECT max(product_id) FROM image WHERE deleted_at IS NULL")[0][0]
    execute(
        media.url,
        f"""
        CREATE FUNCTION crash_on_media() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'simulated crash while writing refs'; END $$;
        CREATE TRIGGER crash BEFORE UPDATE ON product FOR EACH ROW
        WHEN (NEW.id = '{last}' AND NEW.metadata ? 'media') EXECUTE FUNCTION crash_on_media();
    """,
    )
    saved = migrate_product_media_refs().plan.plan_hash
    with pytest.raises(Exception, match="simulated crash"):
        migrate_product_media_refs(dry_run=False, approved_plan_hash=saved, approved_by="alice")
    copies = _objects(media, "products/")
    assert len(copies) == media.expected
    done_before = sum(len(d["refs"]) for d in _media_docs(media.url).values())
    assert 0 < done_before < media.expected  # earlier batches committed, the last did not

    execute(media.url, "DROP TRIGGER crash ON product")
    resumed = migrate_product_media_refs()
    assert resumed.plan.counts["to_copy"] == 0
    assert resumed.plan.counts["already_done"] == done_before
    assert resumed.plan.counts["to_reuse"] == media.expected - done_before
    assert resumed.plan.plan_hash == saved  # the reviewed plan still applies

    result = migrate_product_media_refs(
        dry_run=False, approved_plan_hash=saved, approved_by="alice"
    )
    assert result.applied["copied"] == 0
    assert result.applied["reused"] == media.expected - done_before
    assert _objects(media, "products/") == copies  # nothing copied twice
    refs = _check_refs(media)
    assert {r["key"] for r in refs.values()} == set(copies)


def test_migrate_after_purge_from_the_purge_snapshot(media: Media) -> None:
    with answer_approval(approve_as()):
        purge = purge_product_media(dry_run=False)
    assert _rows(media.url, "SELECT count(*) FROM image")[0][0] == 0
    assert purge.snapshot_uri and purge.snapshot_uri.startswith("s3://")

    nothing = migrate_product_media_refs()  # the live catalog has no image left
    assert nothing.plan.counts["images"] == 0 and "Nothing to migrate" in nothing.message

    with answer_approval(approve_as()) as seen:
        result = migrate_product_media_refs(snapshot_uri=purge.snapshot_uri, dry_run=False)
    assert len(seen) == 1 and seen[0]["snapshot_uri"] == purge.snapshot_uri
    assert result.applied["copied"] == media.expected
    refs = _check_refs(media)
    assert len(refs) == media.expected and media.dup_ids[0] in refs
    assert any(r["alt"] for r in refs.values()) and any(not r["alt"] for r in refs.values())


def test_tampered_snapshot_is_refused(media: Media, tmp_path: Path) -> None:
    from safeops.core.errors import SnapshotInvalid

    snapshot = purge_product_media().snapshot_uri  # dry run: writes a snapshot only
    assert snapshot
    local = tmp_path / "medusa-media-snapshot-20260101T000000Z.json"
    bucket, _, key = snapshot.removeprefix("s3://").partition("/")
    body = media.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    local.write_bytes(body.replace(b"img_", b"imG_", 1))
    with pytest.raises(SnapshotInvalid):
        migrate_product_media_refs(snapshot_uri=str(local))
    assert not _media_docs(media.url) and not _objects(media, "products/")


def test_cli_migrate_refs_dry_run_then_saved_plan(
    media: Media, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safeops.cli import app

    runner = CliRunner()
    dry = runner.invoke(app, ["media", "migrate-refs"])
    assert dry.exit_code == 0, dry.output
    (plan,) = [
        line.removeprefix("plan: ") for line in dry.output.splitlines() if line.startswith("plan: ")
    ]
    assert not _objects(media, "products/")

    live = runner.invoke(app, ["media", "migrate-refs", "--live", "--plan", plan])
    assert live.exit_code == 0, live.output
    assert f"copied={media.expected}" in live.output
    assert len(_check_refs(media)) == media.expected

    monkeypatch.delenv("SAFEOPS_MEDIA_BUCKET")
    bad = runner.invoke(app, ["media", "migrate-refs"])
    assert bad.exit_code == 2 and "SAFEOPS_MEDIA_BUCKET" in bad.output


def test_upload_appends_refs_with_sniffed_types(media: Media, tmp_path: Path) -> None:
    from safeops.cli import app

    pid, meta = _rows(
        media.url,
        "SELECT id, metadata FROM product WHERE metadata IS NOT NULL "
        "AND deleted_at IS NULL ORDER BY id LIMIT 1",
    )[0]
    jpeg = tmp_path / "Front View.JPG"
    jpeg.write_bytes(b"\xff\xd8\xff\xe0" + b"jpeg body" * 50)
    png = tmp_path / "scan"  # no extension: type and extension from the bytes
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"png body" * 50)
    runner = CliRunner()

    first = runner.invoke(app, ["media", "upload", pid, str(jpeg), str(png)])
    assert first.exit_code == 0, first.output
    second = runner.invoke(app, ["media", "upload", pid, str(png)])
    assert second.exit_code == 0, second.output

    one, whole = _validator()
    (doc,) = [m for p, m in _rows(media.url, "SELECT id, metadata FROM product WHERE id = %s", pid)]
    assert {k: v for k, v in doc.items() if k != "media"} == meta
    whole.validate(doc["media"])
    refs = doc["media"]["refs"]
    assert [r["rank"] for r in refs] == [0, 1, 2]
    assert [r["contentType"] for r in refs] == ["image/jpeg", "image/png", "image/png"]
    assert [Path(r["key"]).suffix for r in refs] == [".jpg", ".png", ".png"]
    assert len({r["key"] for r in refs}) == 3
    for ref, path in zip(refs, [jpeg, png, png], strict=True):
        one.validate(ref)
        assert KEY_SCHEME.match(ref["key"]) and ref["key"].startswith(f"products/{pid}/")
        assert ref["sourceImageId"] is None and ref["size"] == path.stat().st_size
        assert ref["etag"] == hashlib.md5(path.read_bytes()).hexdigest()
        head = media.s3.head_object(Bucket=media.bucket, Key=ref["key"])
        assert head["ContentType"] == ref["contentType"]
        assert head["ETag"].strip('"') == ref["etag"]

    objects = _objects(media)
    unknown = runner.invoke(app, ["media", "upload", "prod_DOES_NOT_EXIST", str(png)])
    assert unknown.exit_code == 2 and "prod_DOES_NOT_EXIST" in unknown.output
    assert _objects(media) == objects


def test_merge_keeps_other_refs_replaces_stale_and_never_duplicates() -> None:
    from datetime import UTC, datetime

    from safeops.core.image_ref import ImageRef, MediaRefs
    from tasks.media.refs.write import merge_refs

    def ref(n: int, source: str | None, etag: str, rank: int) -> ImageRef:
        key = f"products/prod_1/20260101T00000{n}Z-{uuid.UUID(int=n, version=4)}.jpg"
        return ImageRef(
            key=key,
            bucket="media",
            url=f"{FILE_URL}/{key}",
            rank=rank,
            contentType="image/jpeg",
            size=1,
            etag=etag,
            alt=None,
            sourceImageId=source,
            sourceUrl=None,
            createdAt=datetime.now(UTC),
        )

    upload, migrated, stale = ref(1, None, "u", 5), ref(2, "img_a", "a", 0), ref(3, "img_b", "b", 1)
    current = MediaRefs(version=1, refs=[upload, migrated, stale])
    fresh_b, dup_a = ref(4, "img_b", "b2", 1), ref(5, "img_a", "a", 0)
    merged, added, left = merge_refs(current, [fresh_b, dup_a])
    assert [r.key for r in merged.refs] == [migrated.key, fresh_b.key, upload.key]
    assert (added, left) == (1, 1)  # img_b replaced (its source changed); dup_a left alone
    assert merge_refs(merged, [fresh_b]) == (merged, 0, 0)  # a retry changes nothing


def test_upload_never_overwrites_an_existing_object(s3_bucket: str, tmp_path: Path) -> None:
    """The store refuses the write itself (create-only PUT), so a key taken between any
    check and the write keeps its bytes."""
    from safeops.core.errors import KeyTaken
    from safeops.core.snapshot_store import s3_client
    from tasks.media.objects import put_verified

    client = s3_client()
    client.put_object(Bucket=s3_bucket, Key="products/p1/taken.png", Body=b"theirs")
    mine = tmp_path / "mine.png"
    mine.write_bytes(b"mine")
    with pytest.raises(KeyTaken, match="Refusing to overwrite existing object"):
        put_verified(client, s3_bucket, "products/p1/taken.png", mine, "image/png", {})
    body = client.get_object(Bucket=s3_bucket, Key="products/p1/taken.png")["Body"].read()
    assert body == b"theirs"

    written = put_verified(client, s3_bucket, "products/p1/new.png", mine, "image/png", {})
    assert written.size == 4
    assert client.get_object(Bucket=s3_bucket, Key="products/p1/new.png")["Body"].read() == b"mine"
