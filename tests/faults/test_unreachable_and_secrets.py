"""Fault 10 (the target database cannot be reached) and the secrets check for the CMS
side (the media side: tests/test_media_safety.py::
test_no_secret_in_parameters_logs_artifacts_snapshots_or_audit).

Wrong credentials: the test server trusts loopback connections, so a wrong password
still logs in. A database that does not exist is the credential-shaped failure we
can produce (the server rejects the connection after the handshake); a closed port is
the unreachable host. Both must exit 1, name the host and never show the password.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import psycopg
import pytest

from tests.cli import cli, finish, start_cli
from tests.conftest import answer_approval, approve_as, free_port
from tests.faults.conftest import runs_of, task_runs
from tests.pg import LOCAL, execute

PASSWORD = "Faults-pw-7Qx!"
AWS_SECRET = "AwsFaultsMarker-2Lm"


def test_unreachable_host_and_unknown_database_exit_1_with_the_password_masked(
    exports: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The closed port in a real process (all it prints), the unknown database in-process.

    The CLI finds both before Prefect starts (safeops/cli/preflight.py) and answers at
    once: a person waits at the terminal (only a server saying it is starting up gets
    retries there). The flows, which runs from the UI or a schedule go through, retry a
    closed port in their tasks (checked below on the flows themselves)."""

    from prefect.types._datetime import now

    from flows.media_purge import purge_product_media
    from flows.site_check import check_site_reset
    from safeops.core.errors import DatabaseUnreachable, LoginRefused
    from tasks.media.snapshot import take_media_snapshot
    from tasks.site.check import check_site

    closed = free_port()
    medusa = f"postgresql://shop_admin:{PASSWORD}@127.0.0.1:{closed}/shop"
    unknown_url = f"postgresql://postgres:{PASSWORD}@127.0.0.1:5432/safeops_no_such_database"
    proc = start_cli(
        "media", "purge", env={"MEDUSA_DATABASE_URL": medusa, "SAFEOPS_RETRY_DELAY_S": "0.1"}
    )
    monkeypatch.setenv("CMS_DATABASE_URL", unknown_url)
    unknown = cli("site", "check", "00000000-0000-4000-8000-000000000000")
    code, out, err = finish(proc)

    runs = {
        "closed port": (code, out, err),
        "no database": (unknown.code, unknown.stdout, unknown.stderr),
    }
    for name, (code, out, err) in runs.items():
        assert code == 1, (name, out, err)
        assert PASSWORD not in out + err, name
        (line,) = err.strip().splitlines()
        assert line.startswith("error: Cannot connect to postgresql://"), (name, line)
        assert ":***@127.0.0.1:" in line, (name, line)
    assert f"127.0.0.1:{closed}/shop" in runs["closed port"][2]
    assert 'database "safeops_no_such_database" does not exist' in runs["no database"][2]

    # The flows themselves: the closed port retried, then failed; the unknown database
    # failed at once.
    since = now("UTC")
    monkeypatch.setattr(take_media_snapshot, "retry_delay_seconds", [0.1, 0.1, 0.1])
    monkeypatch.setattr(check_site, "retry_delay_seconds", [0.1, 0.1, 0.1])
    monkeypatch.setenv("MEDUSA_DATABASE_URL", medusa)
    with pytest.raises(DatabaseUnreachable) as closed_port:
        purge_product_media(dry_run=True)
    with pytest.raises(LoginRefused) as no_database:
        check_site_reset("00000000-0000-4000-8000-000000000000")
    for refused in (closed_port.value, no_database.value):
        assert PASSWORD not in str(refused) and ":***@127.0.0.1:" in str(refused)
    for flow_name, task_name, attempts_made in (
        ("purge-product-media", "snapshot-media", 4),
        ("check-site-reset", "check-site-reset", 1),
    ):
        (run,) = runs_of(flow_name, since)
        (attempts,) = task_runs(run.id, task_name)
        assert attempts.run_count == attempts_made and run.state.is_failed(), flow_name


# ---------------------------------------------------------------- secrets, CMS side


@pytest.fixture()
def cms_with_password(
    cms: tuple[str, dict[str, str]], pg_admin: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, dict[str, str]]:
    if not pg_admin.startswith(LOCAL.rsplit("/", 1)[0]):
        pytest.skip("needs the machine's PostgreSQL on 127.0.0.1:5432")
    execute(
        pg_admin,
        f"""DO $$ BEGIN
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'safeops_faults_pw') THEN
            CREATE ROLE safeops_faults_pw WITH LOGIN SUPERUSER PASSWORD '{PASSWORD}';
        END IF; END $$""",
    )
    url, sites = cms
    database = url.rsplit("/", 1)[1].split("?")[0]
    secret_url = f"postgresql://safeops_faults_pw:{PASSWORD}@127.0.0.1:5432/{database}"
    monkeypatch.setenv("CMS_DATABASE_URL", secret_url)
    return secret_url, sites


def test_no_cms_secret_in_output_parameters_logs_artifacts_snapshots_or_audit(
    cms_with_password: tuple[str, dict[str, str]],
    s3_bucket: str,
    s3_server: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import boto3
    from prefect import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterStartTime,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.logging.handlers import APILogHandler
    from prefect.types._datetime import now

    from flows.site_check import check_site_reset
    from flows.site_reset import reset_site_structure
    from flows.site_restore import restore_site_structure
    from tasks.site.check import check_site

    url, sites = cms_with_password
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    since = now("UTC")
    texts: dict[str, str] = {}
    loggers = [logging.getLogger(n) for n in ("prefect.flow_runs", "prefect.task_runs")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.INFO)
    try:
        for name, args in {
            "cli check": ("site", "check", sites["gazette"]),
            "cli dry run": ("site", "reset", sites["atelier"]),
            "cli reset": ("site", "reset", sites["atelier"], "--live", "--yes"),
        }.items():
            run = cli(*args)
            assert run.code in (0, 3), (name, run)
            texts[name] = run.stdout + run.stderr
        reset = next(
            line for line in texts["cli reset"].splitlines() if line.startswith("snapshot: ")
        ).removeprefix("snapshot: ")
        check_site_reset(sites["empty-site"])
        with answer_approval(approve_as()):
            restore_site_structure(reset, dry_run=False)
        reset_site_structure(sites["empty-site"])
        # A failing run too: its exception text reaches the logs and the CLI's one line.
        monkeypatch.setattr(check_site, "retry_delay_seconds", [0.1, 0.1, 0.1])
        monkeypatch.setenv("CMS_DATABASE_URL", url.replace(":5432/", f":{free_port()}/"))
        failed = cli("site", "check", sites["atelier"])
        assert failed.code == 1 and ":***@" in failed.error_line, failed
        texts["cli failed"] = failed.stdout + failed.stderr
        APILogHandler().flush()
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=since))
        )
        ids = [r.id for r in runs]
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)))
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=ids))
        )
    for r in runs:
        message = r.state.message if r.state else ""
        texts[f"parameters {r.name}"] = json.dumps(r.parameters) + str(message)
    texts["logs"] = "\n".join(log.message for log in logs)
    texts["artifacts"] = "\n".join(a.model_dump_json() for a in artifacts)
    s3 = boto3.client("s3", endpoint_url=s3_server)
    for obj in s3.list_objects_v2(Bucket=s3_bucket)["Contents"]:
        texts[obj["Key"]] = s3.get_object(Bucket=s3_bucket, Key=obj["Key"])["Body"].read().decode()
    with psycopg.connect(url) as conn:
        texts["audit"] = json.dumps(
            conn.execute("SELECT to_jsonb(a) FROM safeops.safeops_audit a").fetchall(), default=str
        )

    # Not vacuous: the runs happened, logged, wrote snapshots and audit rows as this role.
    assert len(runs) >= 6 and len(logs) > 0 and len(artifacts) > 0
    assert "safeops_faults_pw" in texts["audit"] and "site-reset-counts" in texts["artifacts"]
    assert sum(key.endswith(".json") for key in texts) >= 3
    leaks = {where: text for where, text in texts.items() if PASSWORD in text or AWS_SECRET in text}
    assert leaks == {}, list(leaks)
