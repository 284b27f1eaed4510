"""The purge on Medusa's real indexes (the cascade's transient index) and its single
rendering of the catalog (the plan from the snapshot's own view, the file proven
against that view)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest

from flows.media_purge import purge_product_media
from safeops.core.errors import DriftDetected, SnapshotInvalid
from tests.conftest import answer_approval, approve_as
from tests.faults.conftest import read_snapshot_file, write_snapshot_file
from tests.pg import audit_count, execute, scalar

LINK_INDEXES_SQL = (
    "SELECT indexname, indexdef FROM pg_indexes "
    "WHERE tablename = 'product_variant_product_image' ORDER BY indexname"
)
RI_QUERY = "DELETE FROM ONLY product_variant_product_image WHERE $1 = image_id"


def link_indexes(url: str) -> list[tuple[str, str]]:
    with psycopg.connect(url) as conn:
        return [(str(n), str(d)) for n, d in conn.execute(LINK_INDEXES_SQL).fetchall()]


def ri_plan(conn: psycopg.Connection) -> str:
    """How PostgreSQL can run the cascade's query (the RI trigger's text, a generic
    plan). The seeded link table fits in a page, where a scan is cheapest anyway, so
    scans are priced out: what is left is whether an index can serve the query."""
    conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
    conn.execute("SET LOCAL enable_seqscan = off")
    conn.execute("DEALLOCATE ALL")
    conn.execute(f"PREPARE ri(text) AS {RI_QUERY}")
    rows = conn.execute("EXPLAIN EXECUTE ri('img_x')").fetchall()
    return "\n".join(str(r[0]) for r in rows)


def test_the_cascade_reads_an_index_only_inside_the_apply(medusa_url: str) -> None:
    """Medusa's image_id index is partial, so the cascade's query scans the table;
    the apply's transient index turns it into an index scan and is gone after."""
    from sqlalchemy import text

    from safeops.core.db import engine_for, transaction
    from tasks.media.purge import (
        CASCADE_INDEX,
        drop_cascade_index,
        index_for_cascade,
        lock_media_tables,
    )

    before = link_indexes(medusa_url)
    assert any("image_id" in d and "WHERE (deleted_at IS NULL)" in d for _, d in before)
    with psycopg.connect(medusa_url) as conn:
        assert "Seq Scan" in ri_plan(conn)
        conn.rollback()

    with transaction(engine_for("medusa")) as conn:
        lock_media_tables(conn)
        assert index_for_cascade(conn) is True
        raw = conn.connection.driver_connection
        assert isinstance(raw, psycopg.Connection)
        plan = ri_plan(raw)
        assert CASCADE_INDEX in plan and "Seq Scan" not in plan
        assert index_for_cascade(conn) is False  # a plain index exists now: not twice
        drop_cascade_index(conn, True)
        conn.execute(text("SELECT 1"))
    assert link_indexes(medusa_url) == before


def test_live_purge_on_the_real_schema_deletes_every_link_and_leaves_no_index(
    medusa_url: str, exports: Path
) -> None:
    links = int(scalar(medusa_url, "SELECT count(*) FROM product_variant_product_image"))  # type: ignore[call-overload]
    images = int(scalar(medusa_url, "SELECT count(*) FROM image"))  # type: ignore[call-overload]
    assert links > 10 and images > links
    before = link_indexes(medusa_url)

    dry = purge_product_media()
    assert dry.plan is not None and dry.plan.counts["variant_links"] == links
    result = purge_product_media(
        dry_run=False, approved_plan_hash=dry.plan.plan_hash, approved_by="bob"
    )

    assert result.applied == {
        "images": images,
        "variant_links": links,
        "product_thumbnails": dry.plan.counts["product_thumbnails"],
        "variant_thumbnails": dry.plan.counts["variant_thumbnails"],
    }
    assert scalar(medusa_url, "SELECT count(*) FROM product_variant_product_image") == 0
    assert scalar(medusa_url, "SELECT count(*) FROM image") == 0
    assert link_indexes(medusa_url) == before  # the transient index is gone
    assert audit_count(medusa_url) == 1
    assert result.after_totals["totalImages"] == 0


def test_the_snapshots_plan_is_the_plan_of_the_same_rows(medusa_url: str, exports: Path) -> None:
    """A saved plan from a plan task and the plan the snapshot derives in its view agree."""
    from tasks.media.purge import plan_media_purge
    from tasks.media.snapshot import take_media_snapshot

    ref = take_media_snapshot.fn("medusa", str(exports), plan=True)
    planned = plan_media_purge.fn("medusa")
    assert ref.plan is not None
    assert ref.plan.plan_hash == planned.plan_hash
    assert ref.plan.counts == planned.counts
    assert take_media_snapshot.fn("medusa", str(exports)).plan is None  # only when asked


def _edit_body_and_summary(path: Path) -> None:
    """Change one url and recompute the body checksum and the summary to match."""
    summary, key, docs = read_snapshot_file(path)
    product = json.loads(docs[0])
    product["images"][0]["url"] = "http://attacker.test/x.jpg"
    docs[0] = json.dumps(product, separators=(",", ":")).encode()
    write_snapshot_file(path, summary, key, docs)


def test_verify_against_its_view_refuses_a_file_that_is_not_what_the_view_wrote(
    medusa_url: str, exports: Path
) -> None:
    from tasks.media.snapshot import take_media_snapshot
    from tasks.media.verify import verify_media_snapshot

    ref = take_media_snapshot.fn("medusa", str(exports), plan=True)
    report = verify_media_snapshot.fn("medusa", ref.uri, written=ref)
    assert report.ok and ref.plan is not None and report.plan_hash == ref.plan.plan_hash
    assert report.file_sha256  # what the apply will demand

    path = Path(ref.uri)
    original = path.read_bytes()
    path.write_bytes(original.replace(b"http", b"hxxp", 1))  # one edit, checksum left
    with pytest.raises(SnapshotInvalid, match="checksum"):
        verify_media_snapshot.fn("medusa", ref.uri, written=ref)

    path.write_bytes(original)
    _edit_body_and_summary(path)  # edited to match: only the writer's hash tells
    with pytest.raises(SnapshotInvalid, match="the snapshot wrote"):
        verify_media_snapshot.fn("medusa", ref.uri, written=ref)

    path.write_bytes(original)
    summary, key, docs = read_snapshot_file(path)  # the summary alone, body intact
    write_snapshot_file(path, {**summary, "sourceDatabase": "elsewhere"}, key, docs)
    with pytest.raises(SnapshotInvalid, match="failed the summary check"):
        verify_media_snapshot.fn("medusa", ref.uri, written=ref)


def test_a_link_removed_after_the_snapshots_view_is_refused_at_apply(
    medusa_url: str, exports: Path
) -> None:
    """The plan describes the snapshot's view; a link deleted after it (during the
    pause) moves the plan the apply re-derives under its lock: refused as drift,
    naming the link, nothing changed, no index left behind."""
    victim = str(scalar(medusa_url, "SELECT id FROM product_variant_product_image LIMIT 1"))
    before = link_indexes(medusa_url)

    def change_then_approve(data: dict[str, Any]) -> dict[str, Any]:
        execute(medusa_url, "DELETE FROM product_variant_product_image WHERE id = %s", victim)
        return approve_as()(data)

    images = scalar(medusa_url, "SELECT count(*) FROM image")
    with answer_approval(change_then_approve), pytest.raises(DriftDetected) as drift:
        purge_product_media(dry_run=False)
    assert victim in str(drift.value) and "missing from the database" in str(drift.value)
    assert scalar(medusa_url, "SELECT count(*) FROM image") == images
    assert link_indexes(medusa_url) == before
    assert audit_count(medusa_url) == 0
