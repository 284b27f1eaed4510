"""Questions about the product files in MinIO/S3. Nothing here deletes an object."""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import unquote

from safeops.errors import BadInput
from safeops.settings import get_settings
from safeops.snapshot_store import _s3_errors, s3_client


def key_for_url(url: str, file_url: str) -> str | None:
    """Medusa's ``<file_url>/<key>`` back to the key; None when the URL is elsewhere."""
    base = file_url.rstrip("/") + "/"
    if not url.startswith(base):
        return None
    return "/".join(unquote(segment) for segment in url[len(base):].split("/"))


def head_missing(images: Iterable[tuple[str, str]], workers: int = 16) -> tuple[int, list[str]]:
    """HEAD every image's object concurrently; (missing count, first few image ids)."""
    settings = get_settings()
    if not settings.media_bucket or not settings.media_file_url:
        raise BadInput("Object checks need SAFEOPS_MEDIA_BUCKET and SAFEOPS_MEDIA_FILE_URL.")
    bucket, file_url = settings.media_bucket, settings.media_file_url
    client = s3_client()

    def exists(item: tuple[str, str]) -> tuple[str, bool]:
        image_id, url = item
        key = key_for_url(url, file_url)
        if key is None:
            return image_id, False
        from botocore.exceptions import ClientError

        try:
            client.head_object(Bucket=bucket, Key=key)
            return image_id, True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return image_id, False
            raise

    missing: list[str] = []
    count = 0
    with _s3_errors(f"checking objects in bucket {bucket}"), ThreadPoolExecutor(workers) as pool:
        for image_id, ok in pool.map(exists, images):
            if not ok:
                count += 1
                if len(missing) < 5:
                    missing.append(image_id)
    return count, missing
