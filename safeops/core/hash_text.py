"""Hashes in one-line messages: short where that is enough, long where it is not.

Messages showed the first 16 characters of both hashes, so a refused 16-character
``--plan`` prefix, or a checksum edited past its 16th character, read as two equal
values ("abc…" does not match "abc…"). These helpers show enough of each to see
where they part, and never let a typed value break the one-line rule.
"""

from __future__ import annotations

SHORT = 16  # what a glance needs when two sha256 digests differ early, as they nearly always do
LONGEST = 64  # a sha256 in hex; anything typed beyond that is cut


def printable(value: str, limit: int = LONGEST) -> str:
    """A value someone typed, safe on one line and at most ``limit`` characters (+ "…")."""
    shown = "".join(ch if ch.isprintable() else "?" for ch in value)
    return shown if len(shown) <= limit else shown[:limit] + "…"


def tell_apart(first: str, second: str) -> tuple[str, str]:
    """Both values cut where each still shows the characters that differ (at least
    SHORT, at most LONGEST; "…" marks a cut)."""
    common = next(
        (i for i, (a, b) in enumerate(zip(first, second, strict=False)) if a != b),
        min(len(first), len(second)),
    )
    keep = min(max(SHORT, common + 4), LONGEST)
    return printable(first, keep), printable(second, keep)
