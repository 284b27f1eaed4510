"""Fault 9 (restores that meet a database that moved on) and the bad-input list: each
gives a clear report (exit 2) or a clean no-op, and changes nothing.

Covered elsewhere: restore run twice (tests/test_media_safety.py::
test_purge_twice_then_restore_twice, tests/site/test_site_reset_safety.py::
test_restore_twice_restores_nothing_the_second_time), restore of a snapshot whose
products were since deleted (tests/test_media_safety.py::
test_restore_keeps_newer_thumbnails_and_skips_deleted_products), conflicting rows
created after a reset (tests/site/test_site_reset_safety.py::
test_restore_refuses_conflicts_unless_told_to_skip_them), malformed site ids
(tests/site/test_site_reset_safety.py::test_malformed_or_unknown_site_id_is_bad_input and
test_site_cli_exit_codes_2_and_3_and_dry_run_lines).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.cli import cli
from tests.conftest import CMS_TABLES, MEDUSA_TABLES, answer_approval, approve_as
from tests.faults.conftest import States, checksums
from tests.pg import audit_rows, execute, scalar

Cms = tuple[str, dict[str, str]]


def rows(url: str, sql: str, *params: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchall()


def insert_rows(url: str, table: str, saved: list[tuple[Any, ...]]) -> None:
    from psycopg.types.json import Jsonb

    with psycopg.connect(url) as conn:
        for row in saved:
            values = [Jsonb(v) if isinstance(v, dict | list) else v for v in row]
            marks = ", ".join(["%s"] * len(values))
            conn.execute(f"INSERT INTO {table} VALUES ({marks})", values)


# ---------------------------------------------------------------- 9. restore


def test_media_restore_after_some_images_were_put_back_by_hand(
    medusa_url: str, exports: Path, media_states: States
) -> None:
    from flows.media_purge import purge_product_media

    total = int(scalar(medusa_url, "SELECT count(*) FROM image"))  # type: ignore[call-overload]
    saved = rows(medusa_url, "SELECT * FROM image ORDER BY id LIMIT 5")
    with answer_approval(approve_as()):
        uri = purge_product_media(dry_run=False).snapshot_uri
    assert uri
    # An operator re-created five images from a backup, with their ids; one with a new url.
    insert_rows(medusa_url, "image", saved)
    edited = saved[0][0]
    execute(medusa_url, "UPDATE image SET url = 'http://new-host/kept.jpg' WHERE id = %s", edited)

    run = cli("media", "restore", uri, "--live", "--yes")
    assert run.code == 0, run
    assert f"Applied: images={total - 5}," in run.stdout.replace("\n", " ")
    assert "5 images already present" in run.stdout
    assert scalar(medusa_url, "SELECT count(*) FROM image") == total  # no duplicate
    assert (
        scalar(medusa_url, "SELECT url FROM image WHERE id = %s", edited)
        == "http://new-host/kept.jpg"
    )  # the hand-made row is never clobbered
    execute(medusa_url, "UPDATE image SET url = %s WHERE id = %s", saved[0][1], edited)
    assert media_states.now() == "before"  # everything else is back as it was

    again = cli("media", "restore", uri, "--live", "--yes")
    assert again.code == 0 and "Nothing to restore" in again.stdout, again


def test_site_restore_after_a_category_was_put_back_by_hand(cms: Cms, exports: Path) -> None:
    from flows.site_reset import reset_site_structure

    url, sites = cms
    atelier = sites["atelier"]
    before = checksums(url, CMS_TABLES)
    news = rows(url, "SELECT * FROM terms WHERE site_id = %s AND slug = 'news'", atelier)
    news_seo = rows(url, "SELECT * FROM seo_meta WHERE entity_id = %s", news[0][0])
    with answer_approval(approve_as()):
        uri = reset_site_structure(atelier, dry_run=False).snapshot_uri
    assert uri
    insert_rows(url, "terms", news)  # same id, same content, from a backup
    insert_rows(url, "seo_meta", news_seo)

    run = cli("site", "restore", uri, "--live", "--yes")
    assert run.code == 0, run
    assert "categories=3" in run.stdout and "seo_entries=8" in run.stdout, run
    assert checksums(url, CMS_TABLES) == before  # exactly the state before the reset


def test_site_restore_into_a_site_deleted_since_is_bad_input(cms: Cms, exports: Path) -> None:
    from flows.site_reset import reset_site_structure

    url, sites = cms
    uri = reset_site_structure(sites["empty-site"]).snapshot_uri  # dry run: a snapshot
    assert uri
    execute(url, "DELETE FROM sites WHERE id = %s", sites["empty-site"])
    before = checksums(url, CMS_TABLES)
    run = cli("site", "restore", uri, "--live", "--yes")
    assert run.code == 2, run
    assert "Unknown site" in run.error_line and sites["empty-site"] in run.error_line
    assert checksums(url, CMS_TABLES) == before


# ---------------------------------------------------------------- bad input


BAD_URIS = {
    "../exports/medusa-media-snapshot-20261122T000000Z.json": "path traversal",
    "exports/../../etc/passwd": "path traversal",
    "s3://bucket/a/../b.json": "path traversal",
    "ftp://host/medusa-media-snapshot-20261122T000000Z.json": "Unknown snapshot scheme 'ftp'",
    "s3:///key.json": "s3://bucket/key.json",
    "": "empty",
}
BAD_LOCATIONS = {
    "gopher://host/x": "Unknown snapshot scheme 'gopher'",
    "s3://": "names no bucket",
    "/tmp/../etc": "path traversal",
}


def test_bad_snapshot_uris_are_bad_input(medusa_url: str, exports: Path) -> None:
    """Every form is refused before any file or database is touched; two of them go
    through the CLI to show the exit code and the one line."""
    from safeops.core.errors import BadInput
    from safeops.core.snapshot_store import parse_location, split_uri

    for uri, says in BAD_URIS.items():
        with pytest.raises(BadInput, match=says):
            split_uri(uri)
    for location, says in BAD_LOCATIONS.items():
        with pytest.raises(BadInput, match=says):
            parse_location(location)

    before = checksums(medusa_url, MEDUSA_TABLES)
    for args, says in (
        (("media", "restore", "exports/../../etc/passwd", "--live", "--yes"), "path traversal"),
        (("media", "snapshot", "--to", "gopher://host/x"), "Unknown snapshot scheme 'gopher'"),
    ):
        run = cli(*args)
        assert run.code == 2, run
        assert says in run.error_line
    assert checksums(medusa_url, MEDUSA_TABLES) == before
    assert not exports.exists() or not list(exports.iterdir())


@pytest.mark.parametrize("command", ["verify", "purge"])
def test_missing_bucket_is_bad_input(
    medusa_url: str, s3_server: str, command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading from it (verify, restore) and writing a snapshot to it (purge)."""
    monkeypatch.setenv("SAFEOPS_S3_ENDPOINT_URL", s3_server)
    uri = "s3://no-such-bucket/snapshots/medusa-media-snapshot-20261122T000000Z.json"
    monkeypatch.setenv("SAFEOPS_SNAPSHOT_URI", "s3://no-such-bucket/snapshots")
    before = checksums(medusa_url, MEDUSA_TABLES)
    args = {"verify": ("media", "verify", uri), "purge": ("media", "purge", "--live", "--yes")}[
        command
    ]
    run = cli(*args)
    assert run.code == 2, run
    assert "Bucket does not exist" in run.error_line and s3_server in run.error_line
    assert checksums(medusa_url, MEDUSA_TABLES) == before


NOT_SNAPSHOTS = [
    b"hello, this is not json\n",
    b"<html></html>\n",
    b'{"just": "json"}\n',
    b"\x89PNG\r\n\x1a\n",
]


def test_a_file_that_is_not_a_snapshot_is_bad_input(medusa_url: str, exports: Path) -> None:
    from safeops.core.errors import NotASnapshot, SnapshotInvalid
    from safeops.core.snapshot_reader import SnapshotReader
    from tasks.media.snapshot import MEDIA_FORMAT

    for content in NOT_SNAPSHOTS:
        with pytest.raises(NotASnapshot, match="not a safeops snapshot"):
            SnapshotReader(iter(content.splitlines(keepends=True)), MEDIA_FORMAT, "x")
    with pytest.raises(SnapshotInvalid, match="truncation check: the file is empty"):
        SnapshotReader(iter([]), MEDIA_FORMAT, "x")  # a cut file is damage, not bad input

    exports.mkdir(parents=True, exist_ok=True)
    path = exports / "medusa-media-snapshot-20261122T000000Z.json"
    path.write_bytes(NOT_SNAPSHOTS[0])
    before = checksums(medusa_url, MEDUSA_TABLES)
    for args in (
        ("media", "verify", str(path)),
        ("media", "restore", str(path), "--live", "--yes"),
    ):
        run = cli(*args)
        assert run.code == 2, run
        assert "not a safeops snapshot" in run.error_line
    assert checksums(medusa_url, MEDUSA_TABLES) == before


def test_purge_of_an_empty_catalog_is_a_clean_no_op(medusa_url: str, exports: Path) -> None:
    execute(
        medusa_url,
        "DELETE FROM image; UPDATE product SET thumbnail = NULL; "
        "UPDATE product_variant SET thumbnail = NULL",
    )
    before = checksums(medusa_url, MEDUSA_TABLES)
    run = cli("media", "purge", "--live", "--yes")
    assert run.code == 0, run
    assert "Nothing to purge: the catalog holds no image reference." in run.stdout
    assert "Approved" not in run.stdout  # nothing to approve
    assert checksums(medusa_url, MEDUSA_TABLES) == before
    assert audit_rows(medusa_url) == []


def test_duplicate_image_urls_are_purged_and_restored_row_for_row(
    medusa_url: str, exports: Path, media_states: States
) -> None:
    """Medusa's image.url is not unique: two products (and one product twice) share one file.
    Rows are keyed by id, never by url, so every duplicate goes and comes back."""
    shared = str(scalar(medusa_url, "SELECT url FROM image ORDER BY id LIMIT 1"))
    products = [r[0] for r in rows(medusa_url, "SELECT id FROM product ORDER BY id LIMIT 2")]
    for n, product in enumerate([*products, products[0]]):
        execute(
            medusa_url,
            "INSERT INTO image (id, url, rank, product_id) VALUES (%s, %s, 90, %s)",
            f"img_DUPLICATEURL{n:014d}",
            shared,
            product,
        )
    states = States(medusa_url, MEDUSA_TABLES, media_states.applied_fn)
    copies = int(scalar(medusa_url, "SELECT count(*) FROM image WHERE url = %s", shared))  # type: ignore[call-overload]
    assert copies == 4

    from flows.media_purge import purge_product_media

    with answer_approval(approve_as()):
        result = purge_product_media(dry_run=False)
    assert states.now() == "applied" and result.snapshot_uri
    run = cli("media", "restore", result.snapshot_uri, "--live", "--yes")
    assert run.code == 0, run
    assert scalar(medusa_url, "SELECT count(*) FROM image WHERE url = %s", shared) == copies
    assert states.now() == "before"
