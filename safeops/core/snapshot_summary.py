"""The types a snapshot summary's fields must have, checked before anything uses them.

A summary is read from a file anyone could have edited, and code downstream
formats, compares and slices its fields (``summary["bodySha256"][:16]``, totals
compared with counts, a digest version used as a number). A field of the wrong
type must be refused where the file is read, as the named format failure, not
surface later as a TypeError (exit 1) or, worse, compare unequal by accident.

The rules cover every kind of snapshot by the fields' names, so a new kind needs
nothing here as long as it follows them: ``total…`` fields are counts; the names
below are text, or a version number. Fields with other names are kept as they
are (the reader bounds their size).
"""

from __future__ import annotations

import re
from typing import Any

TEXT_FIELDS = (
    "format",
    "createdAt",
    "sourceSystemIdentifier",
    "sourceDatabase",
    "siteId",
    "siteSlug",
    "siteName",
    "planHash",
)
VERSION_FIELDS = ("formatVersion", "planDigest")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def _is_count(value: Any) -> bool:
    # bool is an int in Python; JSON true is not a count.
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:39] + "…"


def summary_problem(summary: dict[str, Any]) -> str | None:
    """What is wrong with the summary's field types, or None when they are right."""
    for key, value in summary.items():
        if key.startswith("total") and not _is_count(value):
            return f"summary field {key} is {_shown(value)}, not a count"
        if key in TEXT_FIELDS and not isinstance(value, str):
            return f"summary field {key} is {_shown(value)}, not text"
        if key in VERSION_FIELDS and not _is_count(value):
            return f"summary field {key} is {_shown(value)}, not a version number"
    sha = summary.get("bodySha256")
    if not isinstance(sha, str):
        return "the summary has no bodySha256"
    if not SHA256_HEX.fullmatch(sha):
        return f"summary field bodySha256 is {_shown(sha)}, not a sha256 in hex"
    return None
