"""sql/purge-product-media.sql, run by the real psql binary as an operator would."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import MEDUSA_TABLES
from tests.media.counts import media_counts
from tests.pg import execute, scalar, table_checksums

SQL_FILE = Path(__file__).resolve().parents[2] / "sql" / "purge-product-media.sql"
PSQL = shutil.which("psql")
COUNT_COLUMNS = ["images", "variant_links", "product_thumbnails", "variant_thumbnails"]
CHANGED_COLUMNS = {
    "variant_links_deleted": "variant_links",
    "images_deleted": "images",
    "product_thumbnails_cleared": "product_thumbnails",
    "variant_thumbnails_cleared": "variant_thumbnails",
}
UNTOUCHED = ["cart_line_item", "order_line_item", "inventory_item"]

pytestmark = pytest.mark.skipif(PSQL is None, reason="psql is not installed")


def run_psql(url: str, script: Path) -> subprocess.CompletedProcess[str]:
    assert PSQL is not None
    return subprocess.run(
        [PSQL, url, "-X", "-v", "ON_ERROR_STOP=1", "-f", str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def parse_tables(output: str) -> list[dict[str, str]]:
    """Every row of every aligned result table psql printed, as column -> text."""
    lines = output.splitlines()
    rows: list[dict[str, str]] = []
    for i in range(len(lines) - 1):
        rule = lines[i + 1].strip()
        if not rule or set(rule) - {"-", "+"}:
            continue
        columns = [c.strip() for c in lines[i].split("|")]
        for line in lines[i + 2 :]:
            if not line.strip() or line.startswith("("):
                break
            rows.append(dict(zip(columns, (v.strip() for v in line.split("|")), strict=True)))
    return rows


def stage_counts(rows: list[dict[str, str]], stage: str) -> dict[str, int]:
    found = [r for r in rows if r.get("stage") == stage]
    assert len(found) == 1, f"expected one {stage!r} row in {rows}"
    return {name: int(found[0][name]) for name in COUNT_COLUMNS}


def changed_counts(rows: list[dict[str, str]]) -> dict[str, int]:
    out = {}
    for column, name in CHANGED_COLUMNS.items():
        found = [r[column] for r in rows if column in r]
        assert len(found) == 1, f"expected one {column!r} result in {rows}"
        out[name] = int(found[0])
    return out


def rows_by_id(url: str, sql: str) -> dict[str, tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return {row[0]: tuple(row[1:]) for row in conn.execute(sql).fetchall()}


def metadata_checksum(url: str) -> object:
    return scalar(
        url,
        "SELECT count(*) || ':' || md5(COALESCE(string_agg("
        "id || '=' || COALESCE(metadata::text, '<null>'), '|' ORDER BY id), '')) "
        "FROM product",
    )


def test_file_ends_in_a_lone_rollback_line() -> None:
    lines = SQL_FILE.read_text().splitlines()
    non_empty = [line for line in lines if line.strip()]
    assert non_empty[-1] == "ROLLBACK;"
    # The operator's sed 's/^ROLLBACK;$/COMMIT;/' must hit that line and nothing else.
    assert lines.count("ROLLBACK;") == 1
    assert not any(line.strip().upper().startswith("COMMIT") for line in lines)


def test_as_shipped_reports_counts_and_changes_nothing(medusa_url: str) -> None:
    before = table_checksums(medusa_url, MEDUSA_TABLES)
    counts = media_counts(medusa_url, COUNT_COLUMNS)
    assert counts["images"] > 100 and counts["product_thumbnails"] > 0

    result = run_psql(medusa_url, SQL_FILE)
    assert result.returncode == 0, result.stderr
    assert "ERROR" not in result.stderr

    rows = parse_tables(result.stdout)
    assert stage_counts(rows, "before") == counts
    assert changed_counts(rows) == counts
    assert stage_counts(rows, "after") == dict.fromkeys(COUNT_COLUMNS, 0)
    assert result.stdout.rstrip().splitlines()[-1] == "ROLLBACK"

    assert table_checksums(medusa_url, MEDUSA_TABLES) == before


def test_edited_to_commit_purges_only_image_references(medusa_url: str, tmp_path: Path) -> None:
    # A variant without a product keeps its thumbnail: only variants of a product are purged.
    execute(
        medusa_url,
        "INSERT INTO product_variant (id, title, product_id, thumbnail, "
        "created_at, updated_at) VALUES ('variant_orphan', 'orphan', NULL, "
        "'http://localhost:9000/medusa-media/orphan.jpg', "
        "'2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z')",
    )
    assert (
        int(
            scalar(
                medusa_url,
                "SELECT count(*) FROM image "  # type: ignore[call-overload]
                "WHERE deleted_at IS NOT NULL",
            )
        )
        > 0
    )

    lines = SQL_FILE.read_text().splitlines(keepends=True)
    last = max(i for i, line in enumerate(lines) if line.strip())
    assert lines[last].rstrip("\n") == "ROLLBACK;"
    lines[last] = "COMMIT;\n"
    script = tmp_path / "purge-commit.sql"
    script.write_text("".join(lines))

    before = table_checksums(medusa_url, MEDUSA_TABLES)
    counts = media_counts(medusa_url, COUNT_COLUMNS)
    metadata_before = metadata_checksum(medusa_url)
    products_before = rows_by_id(medusa_url, "SELECT id, updated_at, thumbnail FROM product")
    variants_before = rows_by_id(
        medusa_url, "SELECT id, updated_at, thumbnail, product_id FROM product_variant"
    )

    result = run_psql(medusa_url, script)
    assert result.returncode == 0, result.stderr
    rows = parse_tables(result.stdout)
    assert stage_counts(rows, "before") == counts
    assert changed_counts(rows) == counts
    assert result.stdout.rstrip().splitlines()[-1] == "COMMIT"

    assert scalar(medusa_url, "SELECT count(*) FROM image") == 0
    assert scalar(medusa_url, "SELECT count(*) FROM product_variant_product_image") == 0
    assert scalar(medusa_url, "SELECT count(*) FROM product WHERE thumbnail IS NOT NULL") == 0
    assert (
        scalar(
            medusa_url,
            "SELECT count(*) FROM product_variant "
            "WHERE product_id IS NOT NULL AND thumbnail IS NOT NULL",
        )
        == 0
    )

    after = table_checksums(medusa_url, MEDUSA_TABLES)
    for table in UNTOUCHED:
        assert after[table] == before[table], table
    assert metadata_checksum(medusa_url) == metadata_before

    products_after = rows_by_id(medusa_url, "SELECT id, updated_at, thumbnail FROM product")
    assert products_after.keys() == products_before.keys()
    stamps = set()
    for pid, (updated_before, thumbnail_before) in products_before.items():
        updated_after, thumbnail_after = products_after[pid]
        assert thumbnail_after is None
        if thumbnail_before is None:
            assert updated_after == updated_before, pid
        else:
            assert updated_after != updated_before, pid
            stamps.add(updated_after)
    assert len(stamps) == 1  # one transaction, one now()

    variants_after = rows_by_id(
        medusa_url, "SELECT id, updated_at, thumbnail, product_id FROM product_variant"
    )
    assert variants_after.keys() == variants_before.keys()
    for vid, (updated_before, thumbnail_before, product_id, *_) in variants_before.items():
        updated_after, thumbnail_after, *_ = variants_after[vid]
        if product_id is None:
            assert (updated_after, thumbnail_after) == (updated_before, thumbnail_before), vid
        elif thumbnail_before is None:
            assert updated_after == updated_before, vid
        else:
            assert thumbnail_after is None and updated_after in stamps, vid
    assert variants_after["variant_orphan"][1] is not None
