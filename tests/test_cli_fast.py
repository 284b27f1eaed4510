"""Issue 13, items 1 and 2: a command answers at once when it can, and the CLI shares one
local Prefect server instead of starting one per command.

Every run here is the real CLI in its own process. The early errors must come with the
flow's own line and exit code *and* without Prefect ever being imported (a wrapper
reports ``sys.modules`` at exit). The local server lives in a temporary SAFEOPS_HOME per
test and is stopped by the fixture, whatever the test did.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "Fast-cli-pw-3Kd!"

# The CLI, plus one line at exit saying whether any prefect module was ever imported.
WRAPPER = """
import atexit, sys
atexit.register(lambda: print("prefect-loaded:", any(
    m == "prefect" or m.startswith("prefect.") for m in sys.modules), file=sys.stderr))
sys.argv = ["safeops", *sys.argv[1:]]
from safeops.cli import app
app()
"""


class Run:
    def __init__(self, proc: subprocess.CompletedProcess[str]) -> None:
        self.code = proc.returncode
        self.stdout = proc.stdout
        lines = proc.stderr.strip().splitlines()
        self.prefect_loaded = "prefect-loaded: True" in lines
        self.stderr_lines = [line for line in lines if not line.startswith("prefect-loaded:")]

    @property
    def error_line(self) -> str:
        (line,) = [line for line in self.stderr_lines if line.startswith("error: ")]
        return line

    def __repr__(self) -> str:
        return f"exit {self.code}\n{self.stdout}\n" + "\n".join(self.stderr_lines)


def run(*args: str, env: dict[str, str], timeout: float = 300) -> Run:
    return Run(
        subprocess.run(
            [sys.executable, "-c", WRAPPER, *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    )


@pytest.fixture()
def home(tmp_path: Path) -> Iterator[Path]:
    """A SAFEOPS_HOME of this test's own; its local server (if any) is stopped at the end."""
    folder = tmp_path / "safeops-home"
    yield folder
    state = folder / "server" / "state.json"
    if state.exists():
        pid = int(json.loads(state.read_text())["pid"])
        try:
            os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                os.kill(pid, 0)
                time.sleep(0.2)
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def local_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of an operator with no Prefect API configured."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PREFECT_API_URL", "MEDUSA_DATABASE_URL", "CMS_DATABASE_URL")
    }
    return {**env, "SAFEOPS_HOME": str(home), **extra}


# ---------------------------------------------------------------- item 1: early errors


def test_input_and_configuration_errors_answer_before_prefect_is_imported(home: Path) -> None:
    site = str(uuid.uuid4())
    closed = free_port()
    medusa_url = f"postgresql://shop_admin:{PASSWORD}@127.0.0.1:{closed}/shop"
    cases: list[tuple[tuple[str, ...], dict[str, str], int, str]] = [
        (
            ("site", "check", site),
            {},
            2,
            "error: No database configured for target 'cms': set CMS_DATABASE_URL or "
            "create a Prefect Secret block named 'cms-database-url'.",
        ),
        (
            ("site", "check", "not-a-uuid"),
            {"CMS_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/x"},
            2,
            "error: Invalid site_id 'not-a-uuid': expected a UUID.",
        ),
        (
            ("site", "reset", site, "--target", "CMS_Prod"),
            {},
            2,
            "error: Invalid target name 'CMS_Prod': use lowercase letters, digits and dashes "
            "(e.g. 'medusa', 'cms').",
        ),
        (
            ("media", "purge"),
            {"MEDUSA_DATABASE_URL": f"mysql://root:{PASSWORD}@db/shop"},
            2,
            "error: Only PostgreSQL is supported, got a 'mysql' URL.",
        ),
        (
            ("media", "purge"),
            {"MEDUSA_DATABASE_URL": f"host=db password={PASSWORD}"},
            2,
            "error: The database URL names no database: postgresql://:***@db/",
        ),
        (
            ("media", "verify", str(home / "missing.json")),
            {"MEDUSA_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/x"},
            2,
            f"error: No snapshot file at {home / 'missing.json'}.",
        ),
        (
            ("site", "restore", "ftp://host/snap.json"),
            {},
            2,
            "error: Unknown snapshot scheme 'ftp' in 'ftp://host/snap.json': use a path or s3://.",
        ),
        (
            ("media", "snapshot", "--to", "s3://"),
            {},
            2,
            "error: Snapshot location 's3://' names no bucket.",
        ),
        (
            ("media", "purge"),
            {"MEDUSA_DATABASE_URL": medusa_url, "SAFEOPS_RETRY_DELAY_S": "0.05"},
            1,
            f"error: Cannot connect to postgresql://shop_admin:***@127.0.0.1:{closed}/shop: ",
        ),
        (
            ("site", "check", site),
            {
                "CMS_DATABASE_URL": f"postgresql://postgres:{PASSWORD}@127.0.0.1:5432/"
                "safeops_no_such_database"
            },
            1,
            "error: Cannot connect to postgresql://postgres:***@127.0.0.1:5432/"
            'safeops_no_such_database: connection failed: connection to server at "127.0.0.1", '
            'port 5432 failed: FATAL:  database "safeops_no_such_database" does not exist',
        ),
    ]
    for args, extra, code, line in cases:
        result = run(*args, env=local_env(home, **extra))
        assert result.code == code, (args, result)
        assert result.error_line.startswith(line), (args, result)
        assert len(result.stderr_lines) == 1, (args, result)
        assert PASSWORD not in repr(result), (args, result)
        assert not result.prefect_loaded, (args, result)
    assert not (home / "server" / "state.json").exists()  # no server was started for any


def test_a_bad_flag_answers_before_prefect_is_imported(home: Path) -> None:
    result = run("media", "purge", "--no-such-flag", env=local_env(home))
    assert result.code == 2, result
    assert "No such option" in "\n".join(result.stderr_lines), result
    assert not result.prefect_loaded, result


def test_a_secret_block_is_never_reported_missing(
    home: Path, cms: tuple[str, dict[str, str]]
) -> None:
    """The block in the local server's database, CMS_DATABASE_URL unset: the command goes on
    to the flow, which resolves the block and answers (exit 0), with the server up or not."""
    url, sites = cms
    env = local_env(home)
    started = run("server", "start", env=env)
    assert started.code == 0, started
    api = json.loads((home / "server" / "state.json").read_text())["url"]
    saved = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from prefect.blocks.system import Secret; "
            "Secret(value=sys.argv[1]).save('cms-database-url', overwrite=True)",
            url,
        ],
        env={
            **env,
            "PREFECT_API_URL": api,
            "PREFECT_API_AUTH_STRING": (home / "server" / "auth").read_text(),
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert saved.returncode == 0, saved.stderr
    check = run("site", "check", sites["empty-site"], env=env)
    assert check.code == 0, check
    # With the server stopped, its database still holds the block: not "missing" either.
    assert run("server", "stop", env=env).code == 0
    again = run("site", "check", sites["empty-site"], env=env)
    assert again.code == 0, again
    assert any("starting a local Prefect server" in line for line in again.stderr_lines), again


def test_a_configured_api_is_asked_for_the_block(home: Path) -> None:
    """PREFECT_API_URL set (the harness): its REST API says the block is absent, so the
    missing variable is reported at once, Prefect not imported, no local server."""
    from prefect.settings import PREFECT_API_URL

    env = {**local_env(home), "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    result = run("site", "check", str(uuid.uuid4()), env=env)
    assert result.code == 2, result
    assert "No database configured for target 'cms'" in result.error_line
    assert not result.prefect_loaded
    assert not (home / "server").exists()


# ---------------------------------------------------------------- item 2: the local server


def server_state(home: Path) -> dict[str, object]:
    return dict(json.loads((home / "server" / "state.json").read_text()))


def test_the_local_server_is_started_once_reused_restarted_and_stopped(
    home: Path, medusa_url: str, exports: Path
) -> None:
    env = local_env(home, MEDUSA_DATABASE_URL=medusa_url)
    status = run("server", "status", env=env)
    assert status.code == 0 and status.stdout.startswith("stopped:"), status

    first = run("media", "purge", env=env)
    assert first.code == 0, first
    assert any(
        "starting a local Prefect server at http://127.0.0.1:" in line
        for line in first.stderr_lines
    ), first
    assert [line for line in first.stdout.splitlines() if line.startswith("plan: ")], first
    state = server_state(home)

    second = run("media", "purge", env=env)
    assert second.code == 0, second
    assert second.stderr_lines == [], second  # no notice: the same server, reused
    assert server_state(home) == state
    status = run("server", "status", env=env)
    assert status.stdout.strip() == (
        f"running: {state['url']} (pid {state['pid']}, files in {home / 'server'})"
    ), status

    # Killed behind its back: the next command notices and starts a new one.
    os.killpg(int(str(state["pid"])), signal.SIGKILL)
    third = run("media", "purge", env=env)
    assert third.code == 0, third
    assert any(f"(pid {state['pid']}) is gone" in line for line in third.stderr_lines), third
    restarted = server_state(home)
    assert restarted["pid"] != state["pid"]

    stopped = run("server", "stop", env=env)
    assert stopped.code == 0 and stopped.stdout.startswith("stopped: http://"), stopped
    with pytest.raises(ProcessLookupError):
        os.kill(int(str(restarted["pid"])), 0)
    assert run("server", "status", env=env).stdout.startswith("stopped:")
    assert run("server", "stop", env=env).stdout.startswith("stopped: no local")


def test_two_commands_starting_at_once_share_one_server(home: Path) -> None:
    env = local_env(home)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "safeops.cli", "server", "start"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert outs[0][0] == outs[1][0] and outs[0][0].startswith("running: http://"), outs
    notices = sum("starting a local Prefect server" in err for _, err in outs)
    assert notices == 1, outs


def test_a_configured_api_starts_no_local_server(
    home: Path, medusa_url: str, exports: Path
) -> None:
    from prefect.settings import PREFECT_API_URL

    api = str(PREFECT_API_URL.value())
    env = {**local_env(home, MEDUSA_DATABASE_URL=medusa_url), "PREFECT_API_URL": api}
    result = run("media", "purge", env=env)
    assert result.code == 0, result
    assert result.stderr_lines == [], result
    assert not (home / "server").exists()
    status = run("server", "status", env=env)
    assert status.stdout.startswith(f"api: {api} (configured"), status


def test_the_local_server_is_its_owners_alone(home: Path) -> None:
    """It listens on 127.0.0.1, where every local user can connect: its API wants the
    credentials kept in a 0600 file, and its folder (database with Secret blocks and their
    key, state.json naming the pid `server stop` signals) is the owner's only."""
    import stat
    import urllib.error
    import urllib.request

    env = local_env(home)
    assert run("server", "start", env=env).code == 0
    try:
        folder = home / "server"
        api = json.loads((folder / "state.json").read_text())["url"]
        for path in (folder, folder / "prefect"):
            assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
        for path in (
            folder / "state.json",
            folder / "auth",
            folder / "lock",
            folder / "server.log",
        ):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        for path in (folder / "prefect").glob("prefect.db*"):
            assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path
        with urllib.request.urlopen(f"{api}/health", timeout=10) as health:
            assert health.status == 200  # probes stay open
        anonymous = urllib.request.Request(
            f"{api}/block_documents/filter", data=b"{}", method="POST"
        )
        anonymous.add_header("Content-Type", "application/json")
        try:
            urllib.request.urlopen(anonymous, timeout=10)
            raise AssertionError("the API answered a request without credentials")
        except urllib.error.HTTPError as refused:
            assert refused.code == 401
    finally:
        assert run("server", "stop", env=env).code == 0


def test_an_unreachable_prefect_api_is_named(home: Path, medusa_url: str) -> None:
    """PREFECT_API_URL set to a closed port: one line naming the Prefect API (not the
    database), exit 1, no fallback to a local server."""
    closed = f"http://127.0.0.1:{free_port()}/api"
    env = {**local_env(home, MEDUSA_DATABASE_URL=medusa_url), "PREFECT_API_URL": closed}
    result = run("media", "purge", env=env)
    assert result.code == 1, result
    (line,) = result.stderr_lines
    assert line.startswith(f"error: The Prefect API at {closed} (PREFECT_API_URL) cannot be"), line
    assert not (home / "server" / "state.json").exists()
