"""Questions about the product files in MinIO/S3. Nothing here deletes an object.

Besides HEAD checks, the ImageRef migration needs server-side copies and
uploads that never overwrite a key and are checked (size, etag) after writing.
At the pipeline's level, not under ``refs``, because two steps ask: the verify's
object check (``head_missing``) and every refs step (keys, copies, uploads).
"""

from __future__ import annotations

import hashlib
import mimetypes
import posixpath
import re
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import filetype

from safeops.core.errors import BadInput, KeyTaken, ObjectMismatch
from safeops.core.settings import get_settings
from safeops.core.snapshot_store import is_key_taken, s3_client, s3_errors


def key_for_url(url: str, file_url: str) -> str | None:
    """Medusa's ``<file_url>/<key>`` back to the key; None when the URL is elsewhere."""
    base = file_url.rstrip("/") + "/"
    if not url.startswith(base):
        return None
    return "/".join(unquote(segment) for segment in url[len(base) :].split("/"))


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
    with s3_errors(f"checking objects in bucket {bucket}"), ThreadPoolExecutor(workers) as pool:
        for image_id, ok in pool.map(exists, images):
            if not ok:
                count += 1
                if len(missing) < 5:
                    missing.append(image_id)
    return count, missing


# ---------------------------------------------------------------- ImageRef objects

# Copies record where they came from in user metadata (x-amz-meta-*), so a run
# that crashed after copying can find and adopt its objects instead of copying
# twice. Values are ASCII: the source key is stored percent-encoded.
META_SOURCE_IMAGE_ID = "safeops-source-image-id"
META_SOURCE_ETAG = "safeops-source-etag"
META_SOURCE_KEY = "safeops-source-key"
MAX_SINGLE_COPY = 5 * 1024**3  # copy_object's limit; larger needs a multipart copy
_HEADERS_KEPT = ("CacheControl", "ContentDisposition", "ContentEncoding", "ContentLanguage")
_EXT = re.compile(r"^\.[a-z0-9]{1,10}$")
_STAMP = re.compile(r"/(\d{8}T\d{6}Z)-[^/]*$")


@dataclass(frozen=True)
class ObjectInfo:
    """What HEAD (or LIST, without metadata) says about one object."""

    key: str
    size: int
    etag: str  # without quotes
    content_type: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    last_modified: datetime | None = None
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def multipart(self) -> bool:
        """Multipart ETags ("<md5>-<parts>") are not the content's MD5."""
        return "-" in self.etag


def _unquote_etag(etag: str) -> str:
    return etag.strip().strip('"')


def _is_not_found(exc: Exception) -> bool:
    from botocore.exceptions import ClientError

    return isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") in (
        "404",
        "NoSuchKey",
        "NotFound",
    )


def head_object(client: Any, bucket: str, key: str) -> ObjectInfo | None:
    """None when the object does not exist; other errors propagate."""
    try:
        head = client.head_object(Bucket=bucket, Key=key)
    except Exception as exc:
        if _is_not_found(exc):
            return None
        raise
    return ObjectInfo(
        key=key,
        size=int(head["ContentLength"]),
        etag=_unquote_etag(head["ETag"]),
        content_type=head.get("ContentType") or None,
        metadata=dict(head.get("Metadata") or {}),
        last_modified=head.get("LastModified"),
        headers={h: head[h] for h in _HEADERS_KEPT if head.get(h)},
    )


def list_objects(client: Any, bucket: str, prefix: str) -> list[ObjectInfo]:
    """Every object under a prefix (no content type or metadata: LIST does not say)."""
    out: list[ObjectInfo] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            out.append(
                ObjectInfo(
                    key=obj["Key"],
                    size=int(obj["Size"]),
                    etag=_unquote_etag(obj["ETag"]),
                    last_modified=obj.get("LastModified"),
                )
            )
    return out


def extension_of(key: str) -> str:
    """Lower-cased extension of a key's last segment, '' when it is not a plain one."""
    ext = posixpath.splitext(key.rsplit("/", 1)[-1])[1].lower()
    return ext if _EXT.match(ext) else ""


def media_key(product_id: str, ext: str, moment: datetime | None = None) -> str:
    """``products/<product_id>/<UTC yyyymmddTHHMMSSZ>-<uuid4><ext>``: never by index."""
    if not product_id or "/" in product_id:
        raise BadInput(f"Product id {product_id!r} cannot be used in an object key.")
    stamp = (moment or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"products/{product_id}/{stamp}-{uuid.uuid4()}{ext}"


def stamp_of(key: str) -> datetime | None:
    """The UTC moment encoded in a media key, if it has one."""
    match = _STAMP.search(key)
    if not match:
        return None
    return datetime.strptime(match.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def guess_content_type(key: str) -> str:
    return mimetypes.guess_type(key.rsplit("/", 1)[-1])[0] or "application/octet-stream"


def _check_written(written: ObjectInfo | None, key: str, size: int, etag: str | None) -> ObjectInfo:
    if written is None:
        raise ObjectMismatch(f"Object {key} is absent right after it was written.")
    if written.size != size or (etag is not None and written.etag != etag):
        raise ObjectMismatch(
            f"Object {key} has size {written.size} and etag {written.etag} after writing; "
            f"expected size {size}" + (f" and etag {etag}" if etag is not None else "") + "."
        )
    return written


def copy_verified(
    client: Any, bucket: str, source: ObjectInfo, dest_key: str, metadata: dict[str, str]
) -> ObjectInfo:
    """Server-side copy (no download) to a key that must not exist yet, then HEAD the
    copy: same size, and the source's etag unless the source was a multipart upload
    (whose etag is not the content's MD5). The source object is only read.

    ``IfNoneMatch="*"`` makes the copy create-only where the server honours it on
    CopyObject (AWS S3 does; moto, which the tests run, ignores it), so the HEAD before
    it stays: with it, a taken key is refused on every server, and the uuid4 in every
    key we copy to (``refs/copy.py``) keeps the window between the two harmless."""
    if head_object(client, bucket, dest_key) is not None:
        raise KeyTaken(f"Refusing to overwrite existing object {dest_key}.")
    extra = {h: v for h, v in source.headers.items() if h in _HEADERS_KEPT}
    try:
        client.copy_object(
            Bucket=bucket,
            Key=dest_key,
            CopySource={"Bucket": bucket, "Key": source.key},
            CopySourceIfMatch=f'"{source.etag}"',
            IfNoneMatch="*",
            MetadataDirective="REPLACE",
            ContentType=source.content_type or guess_content_type(source.key),
            Metadata={**source.metadata, **metadata},
            **extra,
        )
    except Exception as exc:
        if is_key_taken(exc):
            raise KeyTaken(f"Refusing to overwrite existing object {dest_key}.") from None
        raise
    return _check_written(
        head_object(client, bucket, dest_key),
        dest_key,
        source.size,
        None if source.multipart else source.etag,
    )


def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def put_verified(
    client: Any, bucket: str, key: str, path: Path, content_type: str, metadata: dict[str, str]
) -> ObjectInfo:
    """Single PUT of a local file to a key that must not exist yet, checked by HEAD
    (size, and etag = the file's MD5). Create-only by ``IfNoneMatch="*"``: the store
    itself refuses a key that exists (412), so no check-then-write race."""
    size, md5 = path.stat().st_size, file_md5(path)
    with open(path, "rb") as body:
        try:
            client.put_object(
                Bucket=bucket,
                Key=key,
                Body=body,
                ContentType=content_type,
                Metadata=metadata,
                IfNoneMatch="*",
            )
        except Exception as exc:
            if is_key_taken(exc):
                raise KeyTaken(f"Refusing to overwrite existing object {key}.") from None
            raise
    return _check_written(head_object(client, bucket, key), key, size, md5)


# The types whose bytes decide (filetype reads their magic numbers); any other type
# filetype may recognise (zip, mp4, ...) is left to the file name, as before.
SNIFFED = frozenset(
    {
        "image/jpeg",
        "image/png",
        "image/gif",
        "image/webp",
        "image/avif",
        "image/heic",
        "image/tiff",
        "application/pdf",
    }
)


def sniff_content_type(path: Path) -> str:
    """What the bytes say (magic numbers, by the ``filetype`` library), else the file
    name, else octet-stream.

    The content wins over the extension: a PNG saved as ``photo.jpg`` is stored
    as image/png, so browsers and the dashboard get the truth. Two checks stay
    ours because filetype has no signature for them: HEIF's generic ``mif1``
    brand (it knows HEIC's) and SVG, which is text."""
    with open(path, "rb") as handle:
        head = handle.read(512)
    kind = filetype.guess(head)
    if kind is not None and kind.mime in SNIFFED:
        return str(kind.mime)
    if head[4:12] == b"ftypmif1":
        return "image/heif"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in text):
        return "image/svg+xml"
    return guess_content_type(path.name)


def extension_for(name: str, content_type: str) -> str:
    """The file's own extension (lower-case) when it fits the content type, else the
    usual one for the type (a PNG named ``photo.jpg`` is stored as ``.png``)."""
    ext = extension_of(name)
    if ext and (
        content_type == "application/octet-stream"
        or mimetypes.guess_type(f"x{ext}")[0] == content_type
    ):
        return ext
    guessed = mimetypes.guess_extension(content_type) or ""
    return guessed if _EXT.match(guessed) else ext
