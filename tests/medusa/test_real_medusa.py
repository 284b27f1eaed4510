"""safeops against a real Medusa v2: Medusa's own migrations, catalog seeded by its workflows.

Each test runs safeops through its CLI (``uv run safeops ...``, a subprocess, against
the session's Prefect test server) on a fresh copy of the seeded database, and reads
the result back through Medusa itself (``read-catalog.ts``: ``query.graph``) or
changes it through Medusa's workflows (``update-product.ts``).

Slow (each ``medusa exec`` boots every Medusa module); run only these with
``uv run pytest -n 0 tests/medusa -x``.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import psycopg
import pytest

from tests.medusa.conftest import FILE_URL, MedusaTemplate, medusa_exec, read_catalog, timed

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.medusa


def safeops(
    *args: str, env: dict[str, str], timeout: int = 600
) -> subprocess.CompletedProcess[str]:
    """``uv run safeops ARGS`` in its own process, on the test harness's Prefect API."""
    from prefect.settings import PREFECT_API_URL

    full_env = {**os.environ, **env, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    started = time.monotonic()
    run = subprocess.run(
        ["uv", "run", "--frozen", "safeops", *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    timed(f"safeops {' '.join(a for a in args if not a.startswith('/'))}", started)
    assert run.returncode == 0, (
        f"safeops {args} exited {run.returncode}\n{run.stdout}\n{run.stderr}"
    )
    return run


def first_snapshot(output: str) -> str:
    """The undo snapshot: a live purge prints two `snapshot:` lines, the undo one first
    and then the (empty) after-snapshot of the verify step."""
    uris = [
        line[len("snapshot: ") :] for line in output.splitlines() if line.startswith("snapshot: ")
    ]
    assert uris, output
    return uris[0]


@pytest.fixture()
def env(medusa_db: str, tmp_path: Path) -> dict[str, str]:
    return {"MEDUSA_DATABASE_URL": medusa_db, "SAFEOPS_SNAPSHOT_URI": str(tmp_path / "exports")}


def _rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


def _strip_media(catalog: dict[str, Any]) -> dict[str, Any]:
    """The catalog with every image reference taken out: what a purge must leave."""

    def strip(product: dict[str, Any]) -> dict[str, Any]:
        return {
            **product,
            "thumbnail": None,
            "images": [],
            "variants": [{**v, "thumbnail": None, "images": []} for v in product["variants"]],
        }

    return {kind: [strip(p) for p in products] for kind, products in catalog.items()}


def test_the_seed_made_what_the_tests_need(medusa_template: MedusaTemplate) -> None:
    catalog = json.loads(medusa_template.baseline)
    live, deleted = catalog["products"], catalog["deleted"]
    assert len(live) == 8 and {p["handle"] for p in deleted} == {"silk-tie", "cotton-socks"}
    assert sum(len(p["images"]) for p in live) == 29
    assert all(p["images"] for p in deleted)  # soft-deleted with their product
    assert any(v["thumbnail"] for p in live for v in p["variants"])
    # Medusa hard-deleted the image removed by updateProductsWorkflow, and re-ranked the rest
    scarf = next(p for p in live if p["handle"] == "linen-scarf")
    assert [i["url"].rsplit("-", 1)[1] for i in scarf["images"]] == [
        "01.jpg",
        "02.jpg",
        "03.jpg",
        "04.jpg",
        "06.jpg",
    ]
    assert [i["rank"] for i in scarf["images"]] == [0, 1, 2, 3, 4]


def test_purge_leaves_every_product_readable_through_query_graph_with_no_images_or_thumbnails(
    medusa_template: MedusaTemplate, medusa_db: str, env: dict[str, str], tmp_path: Path
) -> None:
    run = safeops("media", "purge", "--live", "--yes", env=env)
    assert Path(first_snapshot(run.stdout)).is_file()

    after = json.loads(read_catalog(medusa_db, tmp_path / "after.json"))
    assert after == _strip_media(json.loads(medusa_template.baseline))
    assert _rows(
        medusa_db,
        "SELECT (SELECT count(*) FROM image), (SELECT count(*) FROM product_variant_product_image)",
    ) == [(0, 0)]


def test_purge_then_restore_reads_back_byte_identical_through_query_graph(
    medusa_template: MedusaTemplate, medusa_db: str, env: dict[str, str], tmp_path: Path
) -> None:
    links_before = _rows(medusa_db, "SELECT * FROM product_variant_product_image ORDER BY id")
    run = safeops("media", "purge", "--live", "--yes", env=env)
    snapshot = first_snapshot(run.stdout)
    safeops("media", "restore", snapshot, "--live", "--yes", env=env)

    assert read_catalog(medusa_db, tmp_path / "restored.json") == medusa_template.baseline
    # The variant-image links come back as they were, timestamps included.
    assert (
        _rows(medusa_db, "SELECT * FROM product_variant_product_image ORDER BY id") == links_before
    )


def test_medusa_product_update_works_after_purge_and_after_restore(
    medusa_template: MedusaTemplate, medusa_db: str, env: dict[str, str]
) -> None:
    tote = next(
        p for p in json.loads(medusa_template.baseline)["products"] if p["handle"] == "tote-bag"
    )
    run = safeops("media", "purge", "--live", "--yes", env=env)

    purged = medusa_exec(
        medusa_db, "update-product", "tote-bag", "Tote Bag (purged)", "note", "after purge"
    )
    assert purged is not None
    assert purged["title"] == "Tote Bag (purged)" and purged["metadata"]["note"] == "after purge"
    assert purged["metadata"]["seeded_by"] == "safeops-tests"  # merged, not replaced
    assert purged["images"] == [] and purged["thumbnail"] is None
    assert set(purged["variantThumbnails"]) == {None}

    safeops("media", "restore", first_snapshot(run.stdout), "--live", "--yes", env=env)
    restored = medusa_exec(
        medusa_db, "update-product", "tote-bag", "Tote Bag (restored)", "note", "after restore"
    )
    assert restored is not None
    assert restored["title"] == "Tote Bag (restored)"
    assert restored["metadata"]["note"] == "after restore"
    assert restored["images"] == [i["url"] for i in tote["images"]]
    assert restored["thumbnail"] == tote["thumbnail"]
    assert restored["variantThumbnails"] == [v["thumbnail"] for v in tote["variants"]]


def test_migrated_refs_in_product_metadata_survive_a_medusa_metadata_update(
    medusa_db: str, env: dict[str, str], s3_server: str
) -> None:
    import boto3

    bucket = f"media-{uuid.uuid4().hex[:10]}"
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket=bucket)
    urls = [u for (u,) in _rows(medusa_db, "SELECT DISTINCT url FROM image")]
    keys = [unquote(u[len(FILE_URL) + 1 :]) for u in urls]
    assert all(u.startswith(FILE_URL + "/") for u in urls)
    assert any(" " in k for k in keys) and any(not k.isascii() for k in keys)
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda k: s3.put_object(
                    Bucket=bucket, Key=k, ContentType="image/jpeg", Body=f"bytes of {k}".encode()
                ),
                keys,
            )
        )

    refs_env = {
        **env,
        "SAFEOPS_S3_ENDPOINT_URL": s3_server,
        "SAFEOPS_MEDIA_BUCKET": bucket,
        "SAFEOPS_MEDIA_FILE_URL": FILE_URL,
    }
    safeops("media", "migrate-refs", "--live", "--yes", env=refs_env)

    media = dict(
        _rows(
            medusa_db,
            "SELECT handle, metadata->'media' FROM product "
            "WHERE deleted_at IS NULL AND metadata ? 'media' ORDER BY handle",
        )
    )
    live_images = dict(
        _rows(
            medusa_db,
            "SELECT p.handle, count(*) FROM image i "
            "JOIN product p ON p.id = i.product_id "
            "WHERE p.deleted_at IS NULL AND i.deleted_at IS NULL GROUP BY 1",
        )
    )
    assert {h: len(m["refs"]) for h, m in media.items()} == live_images

    handle = "tote-bag"
    updated = medusa_exec(medusa_db, "update-product", handle, "Tote Bag v2", "color", "red")
    assert updated is not None
    assert updated["metadata"]["color"] == "red" and updated["title"] == "Tote Bag v2"
    assert updated["metadata"]["media"] == media[handle]  # Medusa merged metadata: refs kept
    assert _rows(
        medusa_db,
        f"SELECT metadata->'media' FROM product WHERE handle = '{handle}' AND deleted_at IS NULL",
    ) == [(media[handle],)]
