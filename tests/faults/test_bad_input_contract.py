"""Issue 15, item 5: bad input that used to escape the contract (exit 1, raw driver or
OS text) now ends in one line and the documented exit code, with nothing changed.

Exit codes: 2 for input that names the wrong thing (a database without the job's
tables, a snapshot folder that cannot be written); 3 for a refusal (a damaged or
malformed snapshot, a saved plan that is not the current one, a lock that could not
be taken in time; the last is retried first, as transient).

Most cases call the flows in-process and assert the named exception; three run the
real CLI in a subprocess, where the exit code and the single stderr line are the point.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.cli import CliResult, finish, start_cli
from tests.conftest import CMS_TABLES, MEDUSA_TABLES
from tests.faults.conftest import checksums, read_snapshot_file, write_snapshot_file
from tests.pg import fresh_database

Cms = tuple[str, dict[str, str]]
MEDIA_TABLES_NAMED = "product, product_variant, image, product_variant_product_image"


def run_cli(*args: str, env: dict[str, str] | None = None) -> CliResult:
    return CliResult(*finish(start_cli(*args, env=env)))


@contextmanager
def lock_held(url: str, table: str, app: str) -> Iterator[int]:
    """Another session holds ROW EXCLUSIVE on ``table`` (as an open write transaction
    would) until the block ends; yields its pid."""
    with psycopg.connect(url, application_name=app) as conn:
        conn.execute(f"LOCK TABLE {table} IN ROW EXCLUSIVE MODE")
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert pid is not None
        yield int(pid[0])
        conn.rollback()


# ---------------------------------------------------------------- lock timeouts


def test_lock_timeout_names_the_holder_and_that_nothing_changed(medusa_url: str) -> None:
    from sqlalchemy import text

    from safeops.core.db import engine_for, transaction
    from safeops.core.errors import LockTimeout, is_refusal
    from tasks.common.retry import worth_retrying
    from tasks.media.purge import LOCK_SQL

    with (
        lock_held(medusa_url, "image", "inventory-sync") as pid,
        pytest.raises(LockTimeout) as refused,
        transaction(engine_for("medusa"), lock_timeout_s=0.5) as conn,
    ):
        conn.execute(LOCK_SQL)
        conn.execute(text("DELETE FROM image"))  # never reached
    message = str(refused.value)
    assert message.startswith(
        f"Refused: could not lock {MEDIA_TABLES_NAMED} within 0.5 s "
        f"(held by pid {pid} 'inventory-sync', idle in transaction "
        "since "
    ), message
    assert message.endswith("Z, on image); nothing changed."), message
    assert "LOCK TABLE" not in message and "\n" not in message  # no SQL, one line
    assert refused.value.exit_code == 3
    assert worth_retrying(refused.value) and not is_refusal(refused.value)  # retried


def test_a_failing_holder_lookup_never_fails_the_refusal(
    medusa_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy import text

    from safeops.core import db_faults
    from safeops.core.db import engine_for, transaction
    from safeops.core.errors import LockTimeout
    from tasks.media.purge import LOCK_SQL

    monkeypatch.setattr(db_faults, "HOLDERS_SQL", text("SELECT * FROM no_such_view"))
    with (
        lock_held(medusa_url, "image", "inventory-sync"),
        pytest.raises(
            LockTimeout,
            match=r"within 0\.5 s \(holder unknown\); nothing "
            r"changed\.$",
        ),
        transaction(engine_for("medusa"), lock_timeout_s=0.5) as conn,
    ):
        conn.execute(LOCK_SQL)


def test_live_purge_under_a_held_lock_exits_3_with_one_line(medusa_url: str, exports: Path) -> None:
    from flows.media_purge import purge_product_media

    plan_hash = purge_product_media(dry_run=True).plan.plan_hash
    before = checksums(medusa_url, MEDUSA_TABLES)
    with lock_held(medusa_url, "image", "inventory-sync") as pid:
        run = run_cli(
            "media",
            "purge",
            "--live",
            "--plan",
            plan_hash,
            env={"SAFEOPS_LOCK_TIMEOUT_S": "1", "SAFEOPS_RETRY_DELAY_S": "0"},
        )
    assert run.code == 3, run
    assert re.fullmatch(
        rf"error: Refused: could not lock {MEDIA_TABLES_NAMED} within 1 s "
        rf"\(held by pid {pid} 'inventory-sync', idle in transaction since "
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ, on image\); nothing changed\.",
        run.error_line,
    ), run
    assert checksums(medusa_url, MEDUSA_TABLES) == before


# ---------------------------------------------------------------- the wrong database


@pytest.fixture()
def empty_url(pg_admin: str) -> Iterator[str]:
    with fresh_database(pg_admin) as url:
        yield url


def test_media_flows_refuse_a_database_without_medusa_tables_naming_them(
    empty_url: str, cms: Cms, exports: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.media_purge import purge_product_media
    from flows.media_snapshot import snapshot_product_media
    from safeops.core.errors import TargetSchemaMissing

    for url in (empty_url, cms[0]):  # nothing at all; the CMS's tables, not Medusa's
        monkeypatch.setenv("MEDUSA_DATABASE_URL", url)
        for run in (snapshot_product_media, lambda: purge_product_media(dry_run=True)):
            with pytest.raises(TargetSchemaMissing) as refused:
                run()
            assert (
                f"has no Medusa tables (4 of 4 missing: {MEDIA_TABLES_NAMED}): point the "
                "target at a Medusa database; nothing changed." in str(refused.value)
            )
            assert url.rpartition("/")[2] in str(refused.value)
            assert refused.value.exit_code == 2
    assert not list(exports.glob("*.json"))


def test_site_flows_refuse_a_database_without_cms_tables_naming_them(
    empty_url: str, medusa_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uuid

    from flows.site_check import check_site_reset
    from flows.site_reset import reset_site_structure
    from safeops.core.errors import TargetSchemaMissing

    for url in (empty_url, medusa_url):
        monkeypatch.setenv("CMS_DATABASE_URL", url)
        for run in (
            lambda: check_site_reset(str(uuid.uuid4())),
            lambda: reset_site_structure(str(uuid.uuid4()), dry_run=True),
        ):
            with pytest.raises(
                TargetSchemaMissing,
                match=r"has no CMS tables \(7 of 7 missing: "
                r"sites, content, terms, .*seo_meta\)",
            ):
                run()


def test_cli_media_snapshot_of_a_database_without_medusa_tables_exits_2(
    empty_url: str, exports: Path
) -> None:
    run = run_cli("media", "snapshot", env={"MEDUSA_DATABASE_URL": empty_url})
    assert run.code == 2, run
    assert "has no Medusa tables (4 of 4 missing: " in run.error_line, run
    assert "does not exist" not in run.error_line


# ---------------------------------------------------------------- unwritable --to


def unwritable_places(tmp: Path) -> dict[str, Path]:
    regular = tmp / "a-file"
    regular.write_text("not a folder")
    read_only = tmp / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    return {
        "proc": Path("/proc/x"),
        "under-a-file": regular / "snapshots",
        "sysfs": Path("/sys/x"),
        "read-only": read_only / "snapshots",
    }


@pytest.mark.parametrize("place", ["proc", "under-a-file", "sysfs", "read-only"])
def test_unwritable_snapshot_locations_are_bad_input(
    medusa_url: str, tmp_path: Path, place: str
) -> None:
    from flows.media_snapshot import snapshot_product_media
    from safeops.core.errors import UnwritableLocation

    if place == "read-only" and os.geteuid() == 0:
        pytest.skip("root writes into a mode 0555 folder; /proc and /sys stand in for it")
    folder = unwritable_places(tmp_path)[place]
    with pytest.raises(UnwritableLocation) as refused:
        snapshot_product_media(snapshot_location=str(folder))
    message = str(refused.value)
    assert message.startswith(f"Cannot write snapshots to {folder}: "), message
    assert message.endswith("; nothing changed.") and "Errno" not in message
    assert refused.value.exit_code == 2


def test_cli_snapshot_to_proc_exits_2(medusa_url: str) -> None:
    run = run_cli("media", "snapshot", "--to", "/proc/x")
    assert run.code == 2, run
    assert run.error_line == (
        "error: Cannot write snapshots to /proc/x: no such file or "
        "directory (ENOENT); nothing changed."
    ), run


# ---------------------------------------------------------------- saved plans


def test_a_refused_plan_prefix_shows_both_hashes_whole(medusa_url: str, exports: Path) -> None:
    from flows.media_purge import purge_product_media
    from safeops.core.errors import PlanMismatch

    plan_hash = purge_product_media(dry_run=True).plan.plan_hash
    before = checksums(medusa_url, MEDUSA_TABLES)
    last = "0" if plan_hash[-1] != "0" else "1"
    for given, advice in [
        (plan_hash[:16], "it is only its first 16 characters: pass the whole hash"),
        (plan_hash[:-1] + last, "run a dry run again"),
    ]:
        with pytest.raises(PlanMismatch) as refused:
            purge_product_media(dry_run=False, approved_plan_hash=given)
        message = str(refused.value)
        assert (
            f"the approved plan {given} does not match the current plan {plan_hash} (" in message
        ), message
        assert message.endswith(f"; {advice}."), message
    assert checksums(medusa_url, MEDUSA_TABLES) == before


# ---------------------------------------------------------------- malformed snapshots


def insert_summary_line(path: str, line: bytes) -> None:
    data = Path(path).read_bytes()
    assert data.startswith(b"{\n")
    Path(path).write_bytes(b"{\n" + line + b"\n" + data[2:])


def test_media_snapshot_with_a_json_bomb_or_wrong_types_is_refused(
    medusa_url: str, exports: Path
) -> None:
    from flows.media_restore import restore_product_media
    from flows.media_snapshot import snapshot_product_media
    from flows.media_verify import verify_product_media_snapshot
    from safeops.core.errors import SnapshotInvalid

    uri = snapshot_product_media().uri
    sound = Path(uri).read_bytes()
    summary, key, docs = read_snapshot_file(uri)
    before = checksums(medusa_url, MEDUSA_TABLES)
    depth = 30000  # under the summary line bound: the parser's recursion is what refuses
    cases: list[tuple[str, Any]] = [
        (
            "unreadable summary line",
            lambda: insert_summary_line(uri, b'"note": ' + b"[" * depth + b"]" * depth + b","),
        ),
        (
            "summary field totalImages is 'many', not a count",
            lambda: write_snapshot_file(uri, {**summary, "totalImages": "many"}, key, docs),
        ),
        (
            "summary field sourceDatabase is 7, not text",
            lambda: write_snapshot_file(uri, {**summary, "sourceDatabase": 7}, key, docs),
        ),
    ]
    for says, damage in cases:
        Path(uri).write_bytes(sound)
        damage()
        for run in (
            lambda: verify_product_media_snapshot(uri),
            lambda: restore_product_media(uri, dry_run=True),
        ):
            with pytest.raises(SnapshotInvalid, match=f"failed the format check: {says}"):
                run()
    # Body documents that are not objects, or nested past any parser, checksum recomputed.
    for bad_docs in (
        [b"[1, 2]", b"5", b'"text"', b"null"],
        [b"[" * 200000 + b"]" * 200000],
        [json.dumps({"id": "p", "images": {"not": "a list"}}).encode()],
    ):
        write_snapshot_file(uri, summary, key, bad_docs)
        for run in (
            lambda: verify_product_media_snapshot(uri),
            lambda: restore_product_media(uri, dry_run=True),
        ):
            with pytest.raises(SnapshotInvalid):
                run()
    assert checksums(medusa_url, MEDUSA_TABLES) == before


def test_site_snapshot_with_documents_that_are_not_objects_is_refused(
    cms: Cms, exports: Path
) -> None:
    from flows.site_reset import reset_site_structure
    from flows.site_restore import restore_site_structure
    from safeops.core.errors import SnapshotInvalid

    url, sites = cms
    site_id = next(iter(sites.values()))
    result = reset_site_structure(site_id, dry_run=True)
    uri = result.snapshot_uri
    assert uri
    summary, key, _ = read_snapshot_file(uri)
    before = checksums(url, CMS_TABLES)
    for bad_docs in (
        [b"[1, 2]", b"5"],
        [b"[" * 200000 + b"]" * 200000],
        [json.dumps({"kind": "pages", "row": [1]}).encode()],
    ):
        write_snapshot_file(uri, summary, key, bad_docs)
        with pytest.raises(SnapshotInvalid):
            restore_site_structure(uri, dry_run=True)
    write_snapshot_file(uri, {**summary, "planDigest": "2"}, key, [])
    with pytest.raises(SnapshotInvalid, match="planDigest is '2', not a version number"):
        restore_site_structure(uri, dry_run=True)
    assert checksums(url, CMS_TABLES) == before
