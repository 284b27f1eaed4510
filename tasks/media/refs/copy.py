"""Copy the planned objects: server-side, concurrently, each checked after writing.

Re-derives the plan first and refuses if it moved since approval; copies an
interrupted run already made are reused, not made again. Every new object
records its source (``safeops-source-*`` metadata) so a later run can find it.
Returns the refs to write, per product; the write task writes them.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from prefect import task
from pydantic import BaseModel, Field

from safeops.core.errors import DriftDetected
from safeops.core.image_ref import ImageRef, public_url
from safeops.core.snapshot_store import s3_client, s3_errors
from tasks.common.artifacts import Progress
from tasks.common.retry import TRANSIENT_RETRIES
from tasks.media.objects import (
    META_SOURCE_ETAG,
    META_SOURCE_IMAGE_ID,
    META_SOURCE_KEY,
    KeyTaken,
    ObjectInfo,
    ObjectMismatch,
    copy_verified,
    extension_of,
    guess_content_type,
    media_key,
    stamp_of,
)
from tasks.media.refs.plan import FIRST_FEW, Item, derive
from tasks.media.refs.store import MediaStore


class CopyOutcome(BaseModel):
    """Verified objects per product, ready to be referenced."""

    refs: dict[str, list[ImageRef]] = Field(default_factory=dict)
    copied: int = 0
    reused: int = 0
    failed: dict[str, int] = Field(default_factory=dict)
    first_failed: list[str] = Field(default_factory=list)


def _ref_for(item: Item, obj: ObjectInfo, store: MediaStore) -> ImageRef:
    src = item.source
    assert src is not None and item.source_key is not None
    return ImageRef(
        key=obj.key,
        bucket=store.bucket,
        url=public_url(store.file_url, obj.key),
        rank=max(item.image.rank, 0),
        contentType=src.content_type or guess_content_type(item.source_key),
        size=obj.size,
        etag=obj.etag,
        alt=item.image.alt,
        sourceImageId=item.image.id,
        sourceUrl=item.image.url,
        createdAt=stamp_of(obj.key) or obj.last_modified or datetime.now(UTC),
    )


def _copy_one(client: Any, store: MediaStore, item: Item) -> tuple[Item, ObjectInfo | None, str]:
    """(item, verified copy or None, failure reason)."""
    from botocore.exceptions import ClientError

    src = item.source
    assert src is not None and item.source_key is not None
    dest = media_key(item.image.product_id, extension_of(item.source_key))
    try:
        copy = copy_verified(
            client,
            store.bucket,
            src,
            dest,
            {
                META_SOURCE_IMAGE_ID: item.image.id,
                META_SOURCE_ETAG: src.etag,
                META_SOURCE_KEY: quote(item.source_key, safe="/"),
            },
        )
    except KeyTaken:
        return item, None, "key_taken"
    except ObjectMismatch:
        return item, None, "copy_mismatch"
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("404", "NoSuchKey", "NotFound"):
            return item, None, "source_missing"
        if code in ("412", "PreconditionFailed"):
            return item, None, "source_changed"
        raise
    return item, copy, ""


@task(name="copy-media-objects", **TRANSIENT_RETRIES)
def copy_media_objects(
    target: str, snapshot_uri: str | None, approved_plan_hash: str
) -> CopyOutcome:
    """Re-derive the plan (refuse if it drifted), then copy concurrently.

    Safe to retry: copies already made are found again and reused."""
    derived = derive(target, snapshot_uri)
    plan = derived.plan
    if plan.plan_hash != approved_plan_hash:
        raise DriftDetected(
            f"Refused: the media changed since the plan was approved "
            f"({approved_plan_hash[:16]}… → {plan.plan_hash[:16]}…; now "
            f"{plan.counts}); nothing copied."
        )
    store = derived.store
    outcome = CopyOutcome()
    by_product: dict[str, list[ImageRef]] = defaultdict(list)
    for item in derived.items:
        if item.outcome == "reuse" and item.reuse is not None:
            by_product[item.image.product_id].append(_ref_for(item, item.reuse, store))
            outcome.reused += 1
    todo = [item for item in derived.items if item.outcome == "copy"]
    progress = Progress("media-refs-copy-progress", len(todo), "objects copied")
    failed: Counter[str] = Counter()
    client = s3_client(store.workers)
    with (
        s3_errors(f"copying objects in bucket {store.bucket}"),
        ThreadPoolExecutor(max(1, min(store.workers, len(todo)))) as pool,
    ):
        futures = [pool.submit(_copy_one, client, store, item) for item in todo]
        for done, future in enumerate(as_completed(futures), start=1):
            item, copy, reason = future.result()
            if copy is None:
                failed[reason] += 1
                if len(outcome.first_failed) < FIRST_FEW:
                    outcome.first_failed.append(f"{item.image.id} ({reason})")
            else:
                by_product[item.image.product_id].append(_ref_for(item, copy, store))
                outcome.copied += 1
            progress.update(done)
    progress.update(len(todo), force=True)
    outcome.failed = dict(failed)
    outcome.refs = dict(by_product)
    return outcome
