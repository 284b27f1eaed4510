"""Shared fixtures: real PostgreSQL, moto's S3 server over HTTP, Prefect's test harness."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

_PREFECT_HOME = tempfile.mkdtemp(prefix="safeops-prefect-")
# The CLI's machine-wide local Prefect server is never the tests': every CLI run gets
# PREFECT_API_URL (the harness), and should one start anyway it lives in this session's
# own folder and is stopped when the session ends (safeops_home_cleanup).
_SAFEOPS_HOME = tempfile.mkdtemp(prefix="safeops-home-")
os.environ.update(
    {
        "PREFECT_HOME": _PREFECT_HOME,
        "SAFEOPS_HOME": _SAFEOPS_HOME,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
        "SAFEOPS_APPROVAL_POLL_S": "1",
        "SAFEOPS_LOCK_TIMEOUT_S": "5",
        "AWS_ACCESS_KEY_ID": "testing-access-key",
        "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
)
os.environ.pop("PREFECT_API_URL", None)

from safeops.core import events  # noqa: E402
from safeops.seeds.cms import CMS_SCHEMA_TABLES  # noqa: E402
from safeops.seeds.medusa import load_schema, seed_medusa  # noqa: E402
from tests.pg import fresh_database, server_url  # noqa: E402
from tests.signing import Key, make_keys  # noqa: E402

MEDUSA_TABLES = [
    "product",
    "image",
    "product_variant",
    "product_variant_product_image",
    "cart_line_item",
    "order_line_item",
    "inventory_item",
]


@pytest.fixture(scope="session", autouse=True)
def prefect_harness() -> Iterator[None]:
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    # 300 s: a loaded 2-core machine has been seen taking over 120 s to start it.
    # No heartbeat thread: joining it costs ~1 s per flow run and tests run ~100 flows.
    with (
        prefect_test_harness(server_startup_timeout=300),
        temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
    ):
        yield


@pytest.fixture(scope="session", autouse=True)
def safeops_home_cleanup() -> Iterator[None]:
    """No test leaves a local Prefect server running in the session's SAFEOPS_HOME."""
    yield
    from safeops.cli import local_server

    local_server.stop()


@pytest.fixture(scope="session")
def pg_admin(tmp_path_factory: pytest.TempPathFactory) -> str:
    return server_url(tmp_path_factory.mktemp("pgdata"))


@pytest.fixture(scope="session")
def medusa_seed_template(pg_admin: str) -> Iterator[str]:
    """A Medusa database with Medusa's real schema (safeops/schemas/medusa.sql, 147
    tables: ≈10 s of DDL on a busy 2-core machine) and the seeded catalog, built once
    per session; yields its name. Only ever copied, never connected to."""
    from sqlalchemy import create_engine

    from safeops.core.settings import sqlalchemy_url

    with fresh_database(pg_admin, prefix="safeops_tmpl") as url:
        engine = create_engine(sqlalchemy_url(url))
        with engine.begin() as conn:
            load_schema(conn, "medusa.sql")
            seed_medusa(conn)
        engine.dispose()
        yield url.rsplit("/", 1)[1].split("?")[0]


@pytest.fixture()
def medusa_url(
    pg_admin: str, medusa_seed_template: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """A fresh database with the Medusa schema and the seeded catalog.

    A copy of the session's seeded template (CREATE DATABASE … TEMPLATE): the same
    rows in every test (seed_medusa is deterministic), without re-running the schema."""
    with fresh_database(pg_admin, template=medusa_seed_template) as url:
        monkeypatch.setenv("MEDUSA_DATABASE_URL", url)
        yield url


@pytest.fixture()
def exports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "exports"
    monkeypatch.setenv("SAFEOPS_SNAPSHOT_URI", str(folder))
    return folder


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture()
def s3_bucket(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket on the moto server; snapshots go to s3://<bucket>/snapshots."""
    import uuid

    import boto3

    monkeypatch.setenv("SAFEOPS_S3_ENDPOINT_URL", s3_server)
    bucket = f"safeops-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    monkeypatch.setenv("SAFEOPS_SNAPSHOT_URI", f"s3://{bucket}/snapshots")
    return bucket


@contextmanager
def answer_approval(
    run_input: dict[str, Any] | Callable[[dict[str, Any]], dict[str, Any]],
) -> Iterator[list[dict[str, Any]]]:
    """Resume the next approval pause from a background thread, as a person would.

    Yields the list of approval requests seen (with flow_run_id and plan)."""
    from prefect import get_client
    from prefect.flow_runs import resume_flow_run

    seen: list[dict[str, Any]] = []

    def resume(data: dict[str, Any]) -> None:
        run_id = data["flow_run_id"]
        with get_client(sync_client=True) as client:
            for _ in range(600):
                state = client.read_flow_run(run_id).state
                if state is not None and state.is_paused():
                    break
                time.sleep(0.1)
        answer = run_input(data) if callable(run_input) else run_input
        resume_flow_run(run_id, run_input=answer)

    def listener(kind: str, data: dict[str, Any]) -> None:
        if kind == "approval":
            seen.append(data)
            threading.Thread(target=resume, args=(data,), daemon=True).start()

    with events.listening(listener):
        yield seen


def approve_as(
    approver: str = "alice", reason: str = "ticket OPS-1"
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def answer(data: dict[str, Any]) -> dict[str, Any]:
        return {
            "approver": approver,
            "reason": reason,
            "confirmation": data["expected_confirmation"],
            "decision": "approve",
        }

    return answer


CMS_TABLES = list(CMS_SCHEMA_TABLES)


@pytest.fixture(scope="session")
def cms_template(pg_admin: str) -> Iterator[tuple[str, dict[str, str]]]:
    """A CMS database with the schema and three seeded sites, built once per session;
    yields (database name, {slug: site id}). Only ever copied, never connected to."""
    from sqlalchemy import create_engine

    from safeops.core.settings import sqlalchemy_url
    from safeops.seeds.cms import seed_cms

    with fresh_database(pg_admin, prefix="safeops_tmpl") as url:
        engine = create_engine(sqlalchemy_url(url))
        with engine.begin() as conn:
            load_schema(conn, "cms.sql")
            sites = seed_cms(conn)
        engine.dispose()
        yield url.rsplit("/", 1)[1].split("?")[0], sites


@pytest.fixture()
def cms(
    pg_admin: str, cms_template: tuple[str, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, dict[str, str]]]:
    """A fresh CMS database with three sites; yields (url, {slug: site id}).

    A copy of the session's seeded template (CREATE DATABASE … TEMPLATE): ≈0.1 s
    instead of ≈1 s of DDL and seeding per test."""
    template, sites = cms_template
    with fresh_database(pg_admin, template=template) as url:
        monkeypatch.setenv("CMS_DATABASE_URL", url)
        yield url, dict(sites)


def approve_slug(approver: str = "alice") -> Callable[[dict[str, Any]], dict[str, Any]]:
    return approve_as(approver)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Key]:
    """Throwaway keys of alice, bob, carol (allowed) and mallory (not allowed)."""
    return make_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture()
def signed(keys: dict[str, Key], monkeypatch: pytest.MonkeyPatch) -> dict[str, Key]:
    """Allowed signers configured on the 'worker' (this process); no ambient key or agent."""
    for name in (
        "SSH_AUTH_SOCK",
        "SAFEOPS_SIGNING_KEY",
        "SAFEOPS_NOTIFY_BLOCK",
        "SAFEOPS_REQUIRED_APPROVALS",
        "SAFEOPS_FORBID_SELF_APPROVAL",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(
        "SAFEOPS_ALLOWED_SIGNERS", str(keys["alice"].path.parent / "allowed_signers")
    )
    return keys
