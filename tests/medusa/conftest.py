"""A real Medusa v2 backend (pinned in package.json / package-lock.json) for the tests here.

Once per session: check the npm registry answers (else skip, with the reason),
``npm ci`` when node_modules is missing or older than the lockfile, create a scratch
database, run Medusa's own migrations (``medusa db:migrate``), seed it through
Medusa's workflows (``seed-catalog.ts``), read the seeded catalog back through
``query.graph`` (the baseline every test compares with) and turn the database into
a TEMPLATE. Each test gets ``CREATE DATABASE x TEMPLATE y`` (a file copy, well under
a second), dropped afterwards.

Medusa is driven only through ``npx medusa exec ./src/scripts/<name>.ts``; safeops
only through its CLI, in subprocesses (see ``test_real_medusa.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.pg import fresh_database, with_database

HERE = Path(__file__).resolve().parent
FILE_URL = "http://localhost:9000/medusa-media"  # where seed-catalog.ts puts image URLs
EXEC_TIMEOUT_S = 600  # a medusa exec boots every module: ~20 s idle, ~50 s on a busy 2-core box

TIMINGS: list[tuple[str, float]] = []


def timed(label: str, started: float) -> float:
    elapsed = time.monotonic() - started
    TIMINGS.append((label, elapsed))
    return elapsed


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if TIMINGS:
        terminalreporter.section("real Medusa timings")
        for label, seconds in TIMINGS:
            terminalreporter.write_line(f"{seconds:7.1f} s  {label}")


def _node_env(database_url: str | None = None) -> dict[str, str]:
    env = {
        **os.environ,
        "NODE_ENV": "development",
        "MEDUSA_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "1",
        "NO_UPDATE_NOTIFIER": "1",
        "npm_config_fund": "false",
        "npm_config_audit": "false",
        "npm_config_update_notifier": "false",
    }
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    return env


def _run(
    cmd: list[str], *, label: str, database_url: str | None = None, timeout: float = EXEC_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    started = time.monotonic()
    run = subprocess.run(
        cmd, cwd=HERE, env=_node_env(database_url), capture_output=True, text=True, timeout=timeout
    )
    timed(label, started)
    if run.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {run.returncode}\n"
            f"--- stdout (tail)\n{run.stdout[-4000:]}\n"
            f"--- stderr (tail)\n{run.stderr[-4000:]}"
        )
    return run


def medusa_exec(database_url: str, script: str, *args: str) -> dict[str, Any] | None:
    """Run ``npx medusa exec ./src/scripts/<script>.ts args`` and return its RESULT line."""
    run = _run(
        ["npx", "--no-install", "medusa", "exec", f"./src/scripts/{script}.ts", *args],
        label=f"medusa exec {script}.ts",
        database_url=database_url,
    )
    results = [
        line[len("RESULT ") :] for line in run.stdout.splitlines() if line.startswith("RESULT ")
    ]
    return json.loads(results[-1]) if results else None


def read_catalog(database_url: str, out: Path) -> str:
    """The catalog as Medusa's Query returns it (read-catalog.ts), as text."""
    medusa_exec(database_url, "read-catalog", str(out))
    return out.read_text()


def _registry_reachable() -> str | None:
    """None when `npm ping` answers quickly, else why not."""
    if shutil.which("npm") is None or shutil.which("node") is None:
        return "node/npm not installed"
    try:
        ping = subprocess.run(
            ["npm", "ping", "--fetch-timeout=10000", "--fetch-retries=0"],
            cwd=HERE,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except subprocess.TimeoutExpired:
        return "npm registry did not answer `npm ping` within 30 s"
    if ping.returncode != 0:
        said = [
            line
            for line in (ping.stderr + ping.stdout).splitlines()
            if line.startswith("npm error") and "complete log" not in line
        ]
        return (
            f"npm registry unreachable (`npm ping` exited {ping.returncode}: "
            f"{said[0].strip() if said else 'no output'})"
        )
    return None


def _ensure_node_modules() -> None:
    """`npm ci` unless node_modules is at least as new as package-lock.json."""
    lock = HERE / "package-lock.json"
    marker = HERE / "node_modules" / ".package-lock.json"  # npm rewrites it on every install
    if marker.is_file() and marker.stat().st_mtime >= lock.stat().st_mtime:
        return
    _run(["npm", "ci", "--no-audit", "--no-fund"], label="npm ci", timeout=1200)
    marker.touch()


@dataclass(frozen=True)
class MedusaTemplate:
    admin_url: str
    name: str
    baseline: str  # read-catalog.ts output of the seeded catalog
    seeded: dict[str, Any]  # seed-catalog.ts's summary


@pytest.fixture(scope="session")
def medusa_template(
    pg_admin: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MedusaTemplate]:
    why = _registry_reachable()
    if why is not None:
        pytest.skip(f"real Medusa tests need the npm registry: {why}")
    _ensure_node_modules()

    name = f"safeops_medusa_tpl_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = with_database(pg_admin, name)
    try:
        _run(
            ["npx", "--no-install", "medusa", "db:migrate"],
            label="medusa db:migrate",
            database_url=url,
        )
        seed = _run(
            ["npx", "--no-install", "medusa", "exec", "./src/scripts/seed-catalog.ts", FILE_URL],
            label="medusa exec seed-catalog.ts",
            database_url=url,
        )
        summary = json.loads(
            next(line for line in reversed(seed.stdout.splitlines()) if line.startswith("{"))
        )
        baseline = read_catalog(url, tmp_path_factory.mktemp("medusa") / "baseline.json")
        with psycopg.connect(pg_admin, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{name}" WITH IS_TEMPLATE true ALLOW_CONNECTIONS false')
        yield MedusaTemplate(admin_url=pg_admin, name=name, baseline=baseline, seeded=summary)
    finally:
        with psycopg.connect(pg_admin, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{name}" WITH IS_TEMPLATE false ALLOW_CONNECTIONS true')
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture()
def medusa_db(medusa_template: MedusaTemplate) -> Iterator[str]:
    """A fresh copy of the migrated, seeded Medusa database; dropped afterwards."""
    started = time.monotonic()
    with fresh_database(
        medusa_template.admin_url, prefix="safeops_medusa", template=medusa_template.name
    ) as url:
        timed("CREATE DATABASE ... TEMPLATE", started)
        yield url
