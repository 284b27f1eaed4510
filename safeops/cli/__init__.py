"""The ``safeops`` command line: the same flows the UI and schedules run, from a terminal."""

from safeops.cli.app import app

__all__ = ["app"]
