"""Prefect tasks of the ImageRef migration: plan, copy, write refs; and uploads.

Source images (live ``image`` rows, or a verified media snapshot after a
purge) are mapped to bucket keys, HEAD-ed, and classified:

- ``copy``: server-side ``copy_object`` to ``products/<id>/<stamp>-<uuid4><ext>``;
- ``reuse``: an earlier run copied it but crashed before writing the ref; the
  copy is found by listing ``products/<id>/`` and reading the
  ``safeops-source-image-id`` / ``safeops-source-etag`` metadata every copy
  carries, and adopted instead of copied again;
- ``already_done``: the product already has a ref with this ``sourceImageId``
  whose etag matches the source object;
- ``skipped_<reason>``: reported with counts and the first few ids, never
  fatal for the others.

All S3 calls of a step run in ONE task through a bounded thread pool (one
Prefect task per image would swamp the API). Refs are written in short
transactions of ``WRITE_BATCH`` products, each locking its product rows,
merging with what is there now and writing only ``metadata.media``.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote
from uuid import UUID

from prefect import task
from prefect.context import FlowRunContext
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import Connection

from safeops.core.db import engine_for, read_snapshot, transaction
from safeops.core.errors import BadInput, DriftDetected, Refused
from safeops.core.image_ref import MEDIA_VERSION, ImageRef, MediaRefs, public_url
from safeops.core.models import Approval, Plan, plan_hash_of
from safeops.core.settings import describe_target, get_settings
from safeops.core.snapshot_store import _s3_errors, s3_client
from tasks.common.artifacts import Progress
from tasks.common.audit import write_audit
from tasks.common.retry import TRANSIENT_RETRIES
from tasks.common.snapshots import open_snapshot
from tasks.media import refs_sql as sql
from tasks.media.medusa_sql import MEDIA_FORMAT, load_snapshot
from tasks.media.objects import (
    MAX_SINGLE_COPY,
    META_SOURCE_ETAG,
    META_SOURCE_IMAGE_ID,
    META_SOURCE_KEY,
    KeyTaken,
    ObjectInfo,
    ObjectMismatch,
    copy_verified,
    extension_for,
    extension_of,
    guess_content_type,
    head_object,
    key_for_url,
    list_objects,
    media_key,
    put_verified,
    sniff_content_type,
    stamp_of,
)

FLOW = "migrate-product-media-refs"
UPLOAD_FLOW = "upload-product-media"
WRITE_BATCH = 100  # products per ref-writing transaction: short row locks
FIRST_FEW = 5
SKIP_REASONS = ("unmapped_url", "missing_object", "soft_deleted", "product_deleted",
                "product_gone", "metadata_not_object", "media_key_in_use", "too_large")

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class MediaStore:
    """Where product files live: bucket, Medusa's file_url, S3 concurrency."""

    bucket: str
    file_url: str
    workers: int


def media_store() -> MediaStore:
    settings = get_settings()
    if not settings.media_bucket or not settings.media_file_url:
        raise BadInput("ImageRefs need SAFEOPS_MEDIA_BUCKET (the bucket of the product files) "
                       "and SAFEOPS_MEDIA_FILE_URL (Medusa's file_url); nothing changed.")
    return MediaStore(settings.media_bucket, settings.media_file_url.rstrip("/"),
                      settings.media_copy_workers)


@dataclass
class Item:
    """One source image and what the migration does with it."""

    image: sql.SourceImage
    outcome: str = "skip"  # copy | reuse | done | skip
    reason: str = ""
    source_key: str | None = None
    source: ObjectInfo | None = None
    reuse: ObjectInfo | None = None

    def hash_line(self) -> str:
        # The hash binds an approval to the source images, their object versions and the
        # skip decisions, not to progress: copy, reuse and done hash alike, so a run that
        # crashed half-way keeps its plan hash and the saved plan resumes it.
        kind = f"skip:{self.reason}" if self.outcome == "skip" else "migrate"
        etag, size = (self.source.etag, self.source.size) if self.source else ("", "")
        return f"{self.image.id}|{self.image.product_id}|{kind}|{etag}|{size}"


@dataclass
class Derived:
    items: list[Item]
    plan: Plan
    store: MediaStore


def _pool_map(fn: Callable[[T], R], values: Iterable[T], workers: int) -> list[R]:
    values = list(values)
    if not values:
        return []
    with ThreadPoolExecutor(min(workers, len(values))) as pool:
        return list(pool.map(fn, values))


def _parse_media(state: sql.ProductState) -> tuple[MediaRefs | None, bool]:
    """(refs, usable): a ``media`` key we did not write is never overwritten."""
    if state.media is None:
        return None, True
    try:
        return MediaRefs.model_validate(state.media), True
    except ValidationError:
        return None, False


# ---------------------------------------------------------------- plan

def _read_sources(target: str, snapshot_uri: str | None
                  ) -> tuple[list[sql.SourceImage], dict[str, sql.ProductState]]:
    with ExitStack() as stack:
        conn: Connection = stack.enter_context(read_snapshot(engine_for(target)))
        table: sql.SourceTable = "image"
        if snapshot_uri:
            reader = stack.enter_context(open_snapshot(snapshot_uri, MEDIA_FORMAT))
            load_snapshot(conn, reader)
            table = "_snap_image"
        return sql.source_images(conn, table), sql.product_states(conn, table)


def derive(target: str, snapshot_uri: str | None) -> Derived:
    """Classify every source image; read-only everywhere (DB and bucket)."""
    store = media_store()
    images, products = _read_sources(target, snapshot_uri)
    current: dict[str, MediaRefs] = {}
    unusable: set[str] = set()
    for pid, product in products.items():
        refs, usable = _parse_media(product)
        if refs is not None:
            current[pid] = refs
        if not usable:
            unusable.add(pid)

    items = [Item(image=img) for img in images]
    pending: list[Item] = []
    for item in items:
        img, state = item.image, products.get(item.image.product_id)
        key = key_for_url(img.url, store.file_url)
        if state is None:
            item.reason = "product_gone"
        elif state.deleted:
            item.reason = "product_deleted"
        elif img.soft_deleted:
            item.reason = "soft_deleted"
        elif state.metadata_kind == "other":
            item.reason = "metadata_not_object"
        elif img.product_id in unusable:
            item.reason = "media_key_in_use"
        elif not key or key.endswith("/"):
            item.reason = "unmapped_url"
        else:
            item.source_key = key
            pending.append(item)

    client = s3_client(store.workers)
    with _s3_errors(f"reading bucket {store.bucket}"):
        def head(key: str) -> ObjectInfo | None:
            return head_object(client, store.bucket, key)

        keys = sorted({item.source_key for item in pending if item.source_key})
        heads = dict(zip(keys, _pool_map(head, keys, store.workers), strict=True))

        to_check: list[tuple[Item, ImageRef]] = []
        migrate: list[Item] = []
        for item in pending:
            src = heads[item.source_key or ""]
            item.source = src
            if src is None:
                item.reason = "missing_object"
                continue
            if src.size > MAX_SINGLE_COPY:
                item.reason = "too_large"
                continue
            refs = current.get(item.image.product_id)
            existing = next((r for r in refs.refs if r.sourceImageId == item.image.id),
                            None) if refs else None
            if existing is not None and existing.etag == src.etag:
                item.outcome = "done"
            elif existing is not None and src.multipart:
                to_check.append((item, existing))  # the copy's etag is not the source's
            else:
                migrate.append(item)
        recorded = _pool_map(lambda pair: head(pair[1].key), to_check, store.workers)
        for (item, _ref), copy in zip(to_check, recorded, strict=True):
            if copy is not None and item.source and \
                    copy.metadata.get(META_SOURCE_ETAG) == item.source.etag:
                item.outcome = "done"
            else:
                migrate.append(item)

        _find_reusable(migrate, current, store, head, client)

    return Derived(items=items, plan=_plan(items, store, target, snapshot_uri), store=store)


def _find_reusable(migrate: list[Item], current: dict[str, MediaRefs], store: MediaStore,
                   head: Callable[[str], ObjectInfo | None], client: Any) -> None:
    """Copy, or reuse a copy an interrupted run left without a ref.

    Adoption needs the copy's recorded source image id AND source etag to match
    and its size (and etag, unless the source was multipart) to equal the
    source's: a stale or foreign object is never adopted."""
    pids = sorted({item.image.product_id for item in migrate})
    referenced = {ref.key for refs in current.values() for ref in refs.refs}
    listings = _pool_map(lambda pid: list_objects(client, store.bucket, f"products/{pid}/"),
                         pids, store.workers)
    candidates = [obj.key for listing in listings for obj in listing
                  if obj.key not in referenced]
    by_image: dict[str, list[ObjectInfo]] = defaultdict(list)
    for info in _pool_map(head, candidates, store.workers):
        if info is not None and info.metadata.get(META_SOURCE_IMAGE_ID):
            by_image[info.metadata[META_SOURCE_IMAGE_ID]].append(info)
    for item in migrate:
        src = item.source
        assert src is not None
        prefix = f"products/{item.image.product_id}/"
        match = next((obj for obj in sorted(by_image.get(item.image.id, []), key=lambda o: o.key)
                      if obj.key.startswith(prefix)
                      and obj.metadata.get(META_SOURCE_ETAG) == src.etag
                      and obj.size == src.size
                      and (src.multipart or obj.etag == src.etag)), None)
        item.outcome, item.reuse = ("reuse", match) if match else ("copy", None)


def _first_few(items: list[Item]) -> str:
    shown = []
    for item in items[:FIRST_FEW]:
        shown.append(f"{item.image.id} ({item.image.url})" if item.reason == "unmapped_url"
                     else item.image.id)
    return ", ".join(shown) + (", …" if len(items) > FIRST_FEW else "")


def _plan(items: list[Item], store: MediaStore, target: str, snapshot_uri: str | None) -> Plan:
    outcomes = Counter(item.outcome for item in items)
    skipped: dict[str, list[Item]] = defaultdict(list)
    for item in items:
        if item.outcome == "skip":
            skipped[item.reason].append(item)
    products = {item.image.product_id for item in items if item.outcome in ("copy", "reuse")}
    counts = {"images": len(items), "products": len(products), "to_copy": outcomes["copy"],
              "to_reuse": outcomes["reuse"], "already_done": outcomes["done"],
              **{f"skipped_{r}": len(skipped[r]) for r in SKIP_REASONS if skipped[r]}}
    notes = [f"skipped {len(skipped[r])} image(s), {r.replace('_', ' ')}: "
             f"{_first_few(skipped[r])}" for r in SKIP_REASONS if skipped[r]]
    body = hashlib.sha256("\n".join(sorted(i.hash_line() for i in items)).encode()).hexdigest()
    hashed = {k: v for k, v in counts.items()
              if k not in ("products", "to_copy", "to_reuse", "already_done")}
    hashed["migrate"] = counts["to_copy"] + counts["to_reuse"] + counts["already_done"]
    return Plan(kind=FLOW, target=describe_target(target), counts=counts, notes=notes,
                plan_hash=plan_hash_of({FLOW: {"bucket": store.bucket, "fileUrl": store.file_url,
                                               "source": "snapshot" if snapshot_uri else "live",
                                               "counts": hashed, "images": body}}))


@task(name="plan-media-refs", **TRANSIENT_RETRIES)
def plan_media_refs(target: str, snapshot_uri: str | None = None) -> Plan:
    """What a migration would copy, reuse, find done and skip; changes nothing."""
    return derive(target, snapshot_uri).plan


# ---------------------------------------------------------------- copy

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
    return ImageRef(key=obj.key, bucket=store.bucket, url=public_url(store.file_url, obj.key),
                    rank=max(item.image.rank, 0),
                    contentType=src.content_type or guess_content_type(item.source_key),
                    size=obj.size, etag=obj.etag, alt=item.image.alt,
                    sourceImageId=item.image.id, sourceUrl=item.image.url,
                    createdAt=stamp_of(obj.key) or obj.last_modified or datetime.now(UTC))


def _copy_one(client: Any, store: MediaStore, item: Item) -> tuple[Item, ObjectInfo | None, str]:
    """(item, verified copy or None, failure reason)."""
    from botocore.exceptions import ClientError

    src = item.source
    assert src is not None and item.source_key is not None
    dest = media_key(item.image.product_id, extension_of(item.source_key))
    try:
        copy = copy_verified(client, store.bucket, src, dest, {
            META_SOURCE_IMAGE_ID: item.image.id, META_SOURCE_ETAG: src.etag,
            META_SOURCE_KEY: quote(item.source_key, safe="/")})
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
def copy_media_objects(target: str, snapshot_uri: str | None,
                       approved_plan_hash: str) -> CopyOutcome:
    """Re-derive the plan (refuse if it drifted), then copy concurrently.

    Safe to retry: copies already made are found again and reused."""
    derived = derive(target, snapshot_uri)
    plan = derived.plan
    if plan.plan_hash != approved_plan_hash:
        raise DriftDetected(f"Refused: the media changed since the plan was approved "
                            f"({approved_plan_hash[:16]}… → {plan.plan_hash[:16]}…; now "
                            f"{plan.counts}); nothing copied.")
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
    with _s3_errors(f"copying objects in bucket {store.bucket}"), \
            ThreadPoolExecutor(max(1, min(store.workers, len(todo)))) as pool:
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


# ---------------------------------------------------------------- write refs

def merge_refs(current: MediaRefs | None, new: list[ImageRef]) -> tuple[MediaRefs, int, int]:
    """(merged refs, refs added or replaced, copies left unreferenced).

    Refs of other images (uploads, other sources) are kept as they are. A ref
    for the same source image is replaced (its source changed), except when it
    already points at an equal copy (written meanwhile): then ours is left."""
    existing = list(current.refs) if current else []
    by_source = {r.sourceImageId: r for r in existing if r.sourceImageId}
    keep: list[ImageRef] = []
    left = 0
    for ref in new:
        old = by_source.get(ref.sourceImageId) if ref.sourceImageId else None
        if old is not None and old.key != ref.key and old.etag == ref.etag:
            left += 1
            continue
        if old is None or old != ref:
            keep.append(ref)
    replaced = {r.sourceImageId for r in keep}
    merged = [r for r in existing if r.sourceImageId is None or r.sourceImageId not in replaced]
    return MediaRefs(version=MEDIA_VERSION, refs=merged + keep).sorted(), len(keep), left


def _batches(values: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(values), size):
        yield values[start:start + size]


def _flow_run_id() -> UUID | None:
    ctx = FlowRunContext.get()
    return ctx.flow_run.id if ctx and ctx.flow_run else None


@task(name="write-media-refs", **TRANSIENT_RETRIES)
def write_media_refs(target: str, refs: dict[str, list[ImageRef]], plan_hash: str,
                     approval: Approval, started_at: datetime,
                     snapshot_uri: str | None) -> dict[str, int]:
    """``metadata.media`` per product, ``WRITE_BATCH`` products per transaction
    (row locks held for milliseconds), an audit row in each. Idempotent."""
    engine = engine_for(target)
    settings = get_settings()
    totals = Counter({"refs_written": 0, "products_updated": 0})
    for number, batch in enumerate(_batches(sorted(refs), WRITE_BATCH), start=1):
        with transaction(engine, lock_timeout_s=settings.lock_timeout_s) as conn:
            states = sql.lock_products(conn, batch)
            updates: dict[str, dict[str, Any]] = {}
            written = 0
            for pid in batch:
                state = states.get(pid)
                current, usable = _parse_media(state) if state else (None, False)
                if state is None or state.deleted or state.metadata_kind == "other" \
                        or not usable:
                    totals["products_skipped_at_write"] += 1
                    continue
                merged, added, left = merge_refs(current, refs[pid])
                totals["copies_left_unreferenced"] += left
                if merged.document() == state.media:
                    continue
                updates[pid] = merged.document()
                written += added
            changed = sql.set_media(conn, updates)
            if changed:
                write_audit(conn, flow_run_id=_flow_run_id(), flow_name=FLOW,
                            target=describe_target(target), plan_hash=plan_hash,
                            approval=approval,
                            counts={"batch": number, "products": changed, "refs": written},
                            snapshot_uri=snapshot_uri, started_at=started_at)
        totals["products_updated"] += changed
        totals["refs_written"] += written
    return {k: v for k, v in totals.items() if v or k in ("refs_written", "products_updated")}


# ---------------------------------------------------------------- upload

def _check_product(state: sql.ProductState | None, product_id: str) -> MediaRefs | None:
    if state is None:
        raise BadInput(f"No product {product_id!r} in the target database; nothing uploaded.")
    if state.deleted:
        raise BadInput(f"Product {product_id} is deleted; nothing uploaded.")
    if state.metadata_kind == "other":
        raise Refused(f"Refused: product {product_id} has metadata that is not a JSON object; "
                      "nothing uploaded.")
    current, usable = _parse_media(state)
    if not usable:
        raise Refused(f"Refused: product {product_id} has a metadata.media that is not "
                      "ImageRefs (version 1); nothing uploaded.")
    return current


def upload_media(target: str, product_id: str, paths: list[Path],
                 approver: str) -> list[ImageRef]:
    """Upload local files under new keys and append their ImageRefs (plain function:
    a quick CLI command, no flow). Files are checked and the product is read before
    anything is written; the refs go in one short transaction with an audit row."""
    store = media_store()
    missing = [str(p) for p in paths if not p.is_file()]
    if not paths or missing:
        raise BadInput("Nothing to upload: " + (", ".join(missing) + " not found"
                                                if missing else "no file given") + ".")
    engine = engine_for(target)
    with transaction(engine, read_only=True) as conn:
        _check_product(sql.read_products(conn, [product_id]).get(product_id), product_id)
    started = datetime.now(UTC).replace(microsecond=0)
    client = s3_client()
    uploaded: list[ImageRef] = []
    with _s3_errors(f"uploading to bucket {store.bucket}"):
        for path in paths:
            content_type = sniff_content_type(path)
            key = media_key(product_id, extension_for(path.name, content_type))
            obj = put_verified(client, store.bucket, key, path, content_type,
                               {"safeops-source-file": quote(path.name)})
            uploaded.append(ImageRef(
                key=key, bucket=store.bucket, url=public_url(store.file_url, key), rank=0,
                contentType=content_type, size=obj.size, etag=obj.etag, alt=None,
                sourceImageId=None, sourceUrl=None, createdAt=stamp_of(key) or started))
    with transaction(engine, lock_timeout_s=get_settings().lock_timeout_s) as conn:
        current = _check_product(sql.lock_products(conn, [product_id]).get(product_id),
                                 product_id)
        existing = list(current.refs) if current else []
        base = max((r.rank for r in existing), default=-1) + 1
        uploaded = [ref.model_copy(update={"rank": base + n}) for n, ref in enumerate(uploaded)]
        merged = MediaRefs(version=MEDIA_VERSION, refs=existing + uploaded).sorted()
        sql.set_media(conn, {product_id: merged.document()})
        write_audit(conn, flow_run_id=None, flow_name=UPLOAD_FLOW,
                    target=describe_target(target),
                    plan_hash=plan_hash_of({UPLOAD_FLOW: {product_id: [r.key for r in uploaded]}}),
                    approval=Approval(approver=approver, reason=f"upload of {len(uploaded)} "
                                      "file(s)", via="cli"),
                    counts={"products": 1, "refs": len(uploaded)}, snapshot_uri=None,
                    started_at=started)
    return uploaded


# ---------------------------------------------------------------- reporting

def outcome_rows(plan: Plan, applied: dict[str, int] | None) -> list[dict[str, Any]]:
    """The counts table: copied, reused, already done, skipped and failed by reason."""
    done = applied or {}
    live = applied is not None
    rows: list[dict[str, Any]] = [
        {"what": "copy (server-side copy_object)", "planned": plan.counts.get("to_copy", 0),
         "done": done.get("copied", 0) if live else ""},
        {"what": "reuse (copy left by an interrupted run)",
         "planned": plan.counts.get("to_reuse", 0), "done": done.get("reused", 0) if live else ""},
        {"what": "already done (ref with same sourceImageId and etag)",
         "planned": plan.counts.get("already_done", 0), "done": ""},
    ]
    rows += [{"what": f"skipped: {r.replace('_', ' ')}", "planned": plan.counts[f"skipped_{r}"],
              "done": ""} for r in SKIP_REASONS if plan.counts.get(f"skipped_{r}")]
    rows += [{"what": f"failed: {k.removeprefix('failed_').replace('_', ' ')}", "planned": "",
              "done": v} for k, v in done.items() if k.startswith("failed_")]
    rows += [{"what": "refs written", "planned": plan.counts.get("to_copy", 0)
              + plan.counts.get("to_reuse", 0), "done": done.get("refs_written", 0) if live
              else ""},
             {"what": "products updated", "planned": plan.counts.get("products", 0),
              "done": done.get("products_updated", 0) if live else ""}]
    return rows
