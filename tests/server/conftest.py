"""A real Prefect stack, once per session: `prefect server start` on PostgreSQL (a scratch
database `safeops_prefect_<hex>`, through asyncpg), the safeops work pool, `prefect deploy
--all`, two process workers that take one flow run at a time each. Every process is stopped
by its pid and every database dropped, even when a test fails."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
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
WORKERS = ("safeops-worker-a", "safeops-worker-b")
# Extra Medusa databases, each its own target (<TARGET>_DATABASE_URL in the workers'
# environment): the scale-out tests queue two runs on one and run two side by side on others;
# the signed UI approvals (test_approvals_signed.py) purge medusa-e.
EXTRA_MEDUSA_TARGETS = ("medusa-b", "medusa-c", "medusa-d", "medusa-e")

# The UI tests drive Debian's Chromium (.ci/run installs it); screenshots land here.
CHROMIUM = os.environ.get("SAFEOPS_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def asyncpg_url(url: str) -> str:
    """Prefect's server speaks to PostgreSQL through SQLAlchemy's asyncpg dialect."""
    scheme, sep, rest = url.partition("://")
    assert sep and scheme in ("postgres", "postgresql"), url
    return f"postgresql+asyncpg://{rest}"


@dataclass
class Stack:
    api_url: str
    env: dict[str, str]
    medusa_url: str
    cms_url: str
    sites: dict[str, str]
    exports: Path
    logs: Path
    targets: dict[str, str] = field(default_factory=dict)  # extra target name -> its URL
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(
        self, name: str, args: list[str], extra_env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            args,
            cwd=ROOT,
            env={**self.env, **(extra_env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes[name] = proc
        return proc

    def run(self, args: list[str], timeout: int = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            args, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def safeops(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run([sys.executable, "-m", "safeops.cli", *args])

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        """The REST API; a 503 (a busy server under load) is retried like Prefect's client."""
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


def stop(*procs: subprocess.Popen[bytes]) -> None:
    """SIGTERM each process group, then SIGKILL what is left (a worker needs two signals);
    the processes are signalled together and waited for together."""
    for sig in (signal.SIGTERM, signal.SIGTERM, signal.SIGKILL):
        alive = [p for p in procs if p.poll() is None]
        for proc in alive:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
        deadline = time.monotonic() + 10
        for proc in alive:
            with suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))


@pytest.fixture(scope="session", autouse=True)
def prefect_harness() -> Iterator[None]:
    """These tests talk to their own server through subprocesses and HTTP only: the
    in-process test harness (an ephemeral server of its own) would only cost start-up time."""
    yield


def seeded_medusa(url: str) -> None:
    from sqlalchemy import create_engine

    from safeops.core.settings import sqlalchemy_url

    engine = create_engine(sqlalchemy_url(url))
    with engine.begin() as conn:
        load_schema(conn, "medusa.sql")
        seed_medusa(conn)
    engine.dispose()


def wait_healthy(api_url: str, server: subprocess.Popen[bytes], logs: Path) -> None:
    deadline = time.monotonic() + 180  # migrations on a fresh database, on a loaded machine
    while True:
        try:
            if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"prefect server did not start; see {logs}/server.log")
        time.sleep(0.5)


@pytest.fixture(scope="session")
def stack(pg_admin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    from sqlalchemy import create_engine

    from safeops.core.settings import env_var_for, sqlalchemy_url
    from safeops.seeds.cms import seed_cms

    home = tmp_path_factory.mktemp("prefect-home")
    logs = tmp_path_factory.mktemp("server-logs")
    exports = tmp_path_factory.mktemp("exports")
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    timing = logs / "timing.log"

    def mark(what: str) -> None:
        with timing.open("a") as out:
            out.write(f"{time.strftime('%H:%M:%S')} {what}\n")

    with ExitStack() as databases:
        prefect_db = databases.enter_context(fresh_database(pg_admin, prefix="safeops_prefect"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(
            {
                "PREFECT_HOME": str(home),
                "PREFECT_API_URL": api_url,
                "PREFECT_API_DATABASE_CONNECTION_URL": asyncpg_url(prefect_db),
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_LOGGING_LEVEL": "WARNING",
                "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
                "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
                "PREFECT_WORKER_QUERY_SECONDS": "1",
                "PREFECT_RUNNER_POLL_FREQUENCY": "1",
                "PREFECT_WORKER_PREFETCH_SECONDS": "1",
                "SAFEOPS_SNAPSHOT_URI": str(exports),
                "SAFEOPS_APPROVAL_POLL_S": "1",
            }
        )
        st = Stack(api_url, env, "", "", {}, exports, logs)
        try:
            mark("server starting")  # it migrates its database while we seed ours
            server = st.start(
                "server", [*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)]
            )
            st.medusa_url = databases.enter_context(fresh_database(pg_admin))
            st.cms_url = databases.enter_context(fresh_database(pg_admin))
            st.targets = {
                t: databases.enter_context(fresh_database(pg_admin)) for t in EXTRA_MEDUSA_TARGETS
            }
            for url in (st.medusa_url, *st.targets.values()):
                seeded_medusa(url)
            engine = create_engine(sqlalchemy_url(st.cms_url))
            with engine.begin() as conn:
                load_schema(conn, "cms.sql")
                st.sites = seed_cms(conn)
            engine.dispose()
            env.update(
                {
                    "MEDUSA_DATABASE_URL": st.medusa_url,
                    "CMS_DATABASE_URL": st.cms_url,
                    **{env_var_for(t): url for t, url in st.targets.items()},
                }
            )
            mark("databases seeded")
            wait_healthy(api_url, server, logs)
            mark("server healthy")
            # What `prefect work-pool create safeops --type process` sends, without the
            # CLI process (a Prefect import costs seconds, minutes on a loaded machine).
            from prefect.workers.process import ProcessWorker

            st.api(
                "POST",
                "/work_pools/",
                json={
                    "name": "safeops",
                    "type": "process",
                    "base_job_template": ProcessWorker.get_default_base_job_template(),
                },
            )
            mark("pool created")
            for name in WORKERS:  # one flow run at a time each: a second live run goes to
                # the other worker while the first is still running (or paused)
                st.start(
                    name,
                    [
                        *PREFECT,
                        "worker",
                        "start",
                        "--pool",
                        "safeops",
                        "--name",
                        name,
                        "--limit",
                        "1",
                    ],
                )
            deploy = st.run([*PREFECT, "--no-prompt", "deploy", "--all"], timeout=300)
            assert deploy.returncode == 0, deploy.stdout + deploy.stderr
            mark("deployed")
            yield st
        finally:
            stop(*reversed(list(st.processes.values())))
            mark("stopped")


@contextmanager
def resume_form(stack: Stack, run_id: str, height: int) -> Iterator[tuple[Any, Any]]:
    """Headless Chromium on the paused run's page with its Resume form open: (page, form).
    The page's HTML is kept in ARTIFACTS when the test fails inside."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": height})
            page.goto(f"{stack.api_url.removesuffix('/api')}/runs/flow-run/{run_id}")
            page.get_by_role("button", name="Resume").click()
            try:
                yield page, page.locator(".p-modal__card")
            except Exception:
                (ARTIFACTS / f"{run_id}.html").write_text(page.content())
                raise
        finally:
            browser.close()
