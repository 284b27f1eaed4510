"""A site's id as the CMS stores it: only a canonical UUID ever reaches SQL.

In the core (not beside the site tasks) so the CLI can refuse a malformed id before it
imports Prefect, with the very message the flow would give."""

from __future__ import annotations

import uuid
from typing import Any

from safeops.core.errors import BadInput


def parse_site_id(site_id: Any) -> str:
    """Only a canonical UUID reaches SQL; anything else is bad input (exit 2)."""
    raw = str(site_id).strip() if site_id is not None else ""
    if not raw or len(raw) > 64:
        raise BadInput(f"Invalid site_id {raw[:64]!r}: expected a UUID.")
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise BadInput(f"Invalid site_id {raw[:64]!r}: expected a UUID.") from None
