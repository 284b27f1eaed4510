"""Where the product files live: the bucket, Medusa's file_url, and how many S3 calls at once.

Read from settings by every step that touches the bucket (plan, copy, upload);
without both settings nothing runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from safeops.core.errors import BadInput
from safeops.core.settings import get_settings


@dataclass(frozen=True)
class MediaStore:
    """Where product files live: bucket, Medusa's file_url, S3 concurrency."""

    bucket: str
    file_url: str
    workers: int


def media_store() -> MediaStore:
    settings = get_settings()
    if not settings.media_bucket or not settings.media_file_url:
        raise BadInput(
            "ImageRefs need SAFEOPS_MEDIA_BUCKET (the bucket of the product files) "
            "and SAFEOPS_MEDIA_FILE_URL (Medusa's file_url); nothing changed."
        )
    return MediaStore(
        settings.media_bucket, settings.media_file_url.rstrip("/"), settings.media_copy_workers
    )
