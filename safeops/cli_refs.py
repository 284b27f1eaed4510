"""``safeops media migrate-refs`` and ``safeops media upload`` (ImageRefs in MinIO)."""

from __future__ import annotations

import typer


def register(media: typer.Typer) -> None:
    """Attach the ImageRef commands to the ``media`` group."""
