"""The core's tests need no Prefect: replace the session's server with nothing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def prefect_harness() -> Iterator[None]:
    """Overrides tests/conftest.py's: starting a Prefect server costs minutes on two cores."""
    yield
