"""A real Prefect stack: `prefect server start`, the safeops work pool, `prefect deploy
--all`, a process worker. Every process is stopped by its pid, even when a test fails."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from safeops.seeds.medusa import load_schema, seed_medusa
from tests.conftest import free_port
from tests.pg import fresh_database

ROOT = Path(__file__).resolve().parents[2]
PREFECT = [sys.executable, "-m", "prefect"]


@dataclass
class Stack:
    api_url: str
    env: dict[str, str]
    medusa_url: str
    cms_url: str
    sites: dict[str, str]
    exports: Path
    logs: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, args: list[str], extra_env: dict[str, str] | None = None
              ) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(args, cwd=ROOT, env={**self.env, **(extra_env or {})},
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.processes[name] = proc
        return proc

    def run(self, args: list[str], timeout: int = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, cwd=ROOT, env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def safeops(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run([sys.executable, "-m", "safeops.cli", *args])

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        """The REST API; a 503 (SQLite busy under load) is retried like Prefect's client does."""
        for _ in range(20):
            response = httpx.request(method, f"{self.api_url}{path}", timeout=30, **kwargs)
            if response.status_code != 503:
                break
            time.sleep(1)
        response.raise_for_status()
        return response.json() if response.content else None

    def flow_run(self, run_id: str) -> dict[str, Any]:
        return dict(self.api("GET", f"/flow_runs/{run_id}"))

    def wait_state(self, run_id: str, states: set[str], timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.flow_run(run_id)["state"]["type"]
            if state in states:
                return state
            time.sleep(0.5)
        raise AssertionError(f"run {run_id} still {state} after {timeout} s; logs in {self.logs}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, then SIGKILL what is left (a worker needs two signals)."""
    for sig in (signal.SIGTERM, signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def stack(pg_admin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    from sqlalchemy import create_engine

    from safeops.core.settings import sqlalchemy_url
    from safeops.seeds.cms import seed_cms

    home = tmp_path_factory.mktemp("prefect-home")
    logs = tmp_path_factory.mktemp("server-logs")
    exports = tmp_path_factory.mktemp("exports")
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    with fresh_database(pg_admin) as medusa_url, fresh_database(pg_admin) as cms_url:
        engine = create_engine(sqlalchemy_url(medusa_url))
        with engine.begin() as conn:
            load_schema(conn, "medusa.sql")
            seed_medusa(conn)
        engine.dispose()
        engine = create_engine(sqlalchemy_url(cms_url))
        with engine.begin() as conn:
            load_schema(conn, "cms.sql")
            sites = seed_cms(conn)
        engine.dispose()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update({
            "PREFECT_HOME": str(home), "PREFECT_API_URL": api_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_LOGGING_LEVEL": "WARNING", "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
            "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
            "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_RUNNER_POLL_FREQUENCY": "1",
            "PREFECT_WORKER_PREFETCH_SECONDS": "1",
            "MEDUSA_DATABASE_URL": medusa_url, "CMS_DATABASE_URL": cms_url,
            "SAFEOPS_SNAPSHOT_URI": str(exports), "SAFEOPS_APPROVAL_POLL_S": "1",
        })
        st = Stack(api_url, env, medusa_url, cms_url, sites, exports, logs)
        try:
            st.start("server", [*PREFECT, "server", "start", "--host", "127.0.0.1", "--port",
                                str(port)])
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"prefect server did not start; see {logs}")
                time.sleep(0.5)
            pool = st.run([*PREFECT, "work-pool", "create", "safeops", "--type", "process"])
            assert pool.returncode == 0, pool.stdout + pool.stderr
            deploy = st.run([*PREFECT, "--no-prompt", "deploy", "--all"], timeout=240)
            assert deploy.returncode == 0, deploy.stdout + deploy.stderr
            st.start("worker", [*PREFECT, "worker", "start", "--pool", "safeops"])
            yield st
        finally:
            for proc in reversed(list(st.processes.values())):
                stop(proc)
