"""One destructive run per target at a time, queued by Prefect.

A global concurrency limit of 1 per database (media) or per site (CMS),
created on first use and taken with ``strict=True`` so a missing limit can
never silently mean "no limit". The database lock inside the apply stays the
real guard; this makes a second run wait its turn instead of failing on it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from prefect import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound


def limit_name(*parts: str) -> str:
    return "safeops-" + "-".join(re.sub(r"[^a-z0-9-]+", "-", p.lower()) for p in parts)


def ensure_limit(name: str) -> None:
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with suppress(ObjectAlreadyExists):
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=1, active=True))


@contextmanager
def one_at_a_time(name: str, enabled: bool = True) -> Iterator[None]:
    """Hold the target's single slot for the whole live run (approval included)."""
    if not enabled:
        yield
        return
    ensure_limit(name)
    with concurrency(name, occupy=1, strict=True):
        yield
