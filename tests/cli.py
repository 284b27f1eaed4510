"""Ways to run the ``safeops`` CLI in tests: a real subprocess (``safeops``, or
``start_cli`` + ``finish`` for one that runs beside the test or is killed), and in this
process through Typer's runner (``cli``): same code path, exit code and streams."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def safeops(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None, timeout: int = 240
) -> subprocess.CompletedProcess[str]:
    """Run the CLI in its own process, against the test harness's Prefect API."""
    from prefect.settings import PREFECT_API_URL

    full_env = {**os.environ, **(env or {}), "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    return subprocess.run(
        [sys.executable, "-m", "safeops.cli", *args],
        cwd=ROOT,
        env=full_env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def lines_starting(output: str, prefix: str) -> list[str]:
    return [line[len(prefix) :] for line in output.splitlines() if line.startswith(prefix)]


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    return {**os.environ, **(extra or {}), "PREFECT_API_URL": str(PREFECT_API_URL.value())}


def start_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """The real CLI in its own process (own session, so it can be SIGKILLed alone)."""
    return subprocess.Popen(
        [sys.executable, "-m", "safeops.cli", *args],
        cwd=ROOT,
        env=cli_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen[str], timeout_s: float = 240) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"CLI still running after {timeout_s} s:\n{out}\n{err}") from None
    return proc.returncode, out, err


class CliResult:
    def __init__(self, code: int, stdout: str, stderr: str) -> None:
        self.code, self.stdout, self.stderr = code, stdout, stderr

    @property
    def error_line(self) -> str:
        """The one line a refusal prints (stderr must hold exactly one)."""
        lines = self.stderr.strip().splitlines()
        assert len(lines) == 1, f"expected one line on stderr, got:\n{self.stderr}"
        return lines[0]

    def __repr__(self) -> str:
        return f"exit {self.code}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"


def cli(*args: str) -> CliResult:
    """The CLI in this process (Typer's runner): same code path, exit code and output
    streams as the console script, without 10 s of interpreter and Prefect start-up."""
    from typer.testing import CliRunner

    from safeops.cli import app

    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    return CliResult(result.exit_code, result.stdout, result.stderr)
