"""``python -m safeops.cli``: what the tests and the demo's subprocesses run."""

from safeops.cli.app import app

app()
